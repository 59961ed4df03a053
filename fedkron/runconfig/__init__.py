"""The run configuration: one typed record of every setting (:mod:`.fields`), the allowed values and
defaults it reads (:mod:`.choices`), and every check of its values (:mod:`.checks`)."""

from fedkron.runconfig.choices import ConfigError
from fedkron.runconfig.fields import RunConfig

__all__ = ["ConfigError", "RunConfig"]

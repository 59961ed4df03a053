"""``python -m fedkron`` and the ``fedkron`` command.

Third-party notices raised while the CLI's imports load (bitsandbytes' CPU backend logs one on
machines with AVX-512 BF16; torch's compiler warns about ``script_method``) are quieted before those
imports, unless ``--verbose`` is given: importing ``fedkron.cli`` itself leaves logging alone.
"""

import sys

from fedkron.logs import quiet_third_party


def main() -> int:
    if "--verbose" not in sys.argv[1:]:
        quiet_third_party()
    from fedkron.cli import main as cli_main  # here: after quieting, since its imports load bitsandbytes

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())

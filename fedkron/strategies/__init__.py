"""Server-side strategy: encode broadcasts, decode and validate replies, average factor by factor."""

from fedkron.strategies.aggregate import weighted_mean
from fedkron.strategies.ledger import Ledger, LedgerRow
from fedkron.strategies.per_factor import PerFactorFedAvg, arrayrecord_to_state, state_to_arrayrecord
from fedkron.strategies.validation import RejectedReply, decode_reply

__all__ = ["Ledger", "LedgerRow", "PerFactorFedAvg", "RejectedReply", "arrayrecord_to_state",
           "decode_reply", "state_to_arrayrecord", "weighted_mean"]

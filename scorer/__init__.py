"""scorer: a real-time streaming fraud scorer (Kafka in, decisions out, ONNX in-process).

The public API for using the scorer from Python (everything else is internal and may move):

    from scorer import Scorer

    scorer = Scorer.load()  # the shipped model; or Scorer.load("models/mine/1", history="data/default")
    decisions = scorer.score([{"transaction_id": "t1", "customer_id": "C1", ...}])

`ScoringCore` is the batch core the Kafka loop drives (values and input partitions in, records out).

See docs/architecture.md for how the subpackages fit together.
"""

from scorer.aggregate.table import MemorySource, TerminalTable
from scorer.config import Settings, load_settings
from scorer.errors import ConfigError, DataError, ModelError, Rejected, ScorerError
from scorer.events.batches import LabelBatch, TransactionBatch
from scorer.events.decode import decode_labels, decode_transactions
from scorer.features.engine import FEATURE_NAMES, FeatureConfig, FeatureEngine
from scorer.model.onnx import OnnxModel
from scorer.rollout.serving import Serving
from scorer.runtime.metrics import Metrics
from scorer.scoring.core import DEAD_LETTER_REASONS, ScoringCore
from scorer.scoring.customers import CustomerStore
from scorer.scoring.embedded import Scorer
from scorer.scoring.scored import DeadLetter, Scored
from scorer.version import __version__

__all__ = [
    "DEAD_LETTER_REASONS",
    "FEATURE_NAMES",
    "ConfigError",
    "CustomerStore",
    "DataError",
    "DeadLetter",
    "FeatureConfig",
    "FeatureEngine",
    "LabelBatch",
    "MemorySource",
    "Metrics",
    "ModelError",
    "OnnxModel",
    "Rejected",
    "Scored",
    "Scorer",
    "ScoringCore",
    "ScorerError",
    "Serving",
    "Settings",
    "TerminalTable",
    "TransactionBatch",
    "__version__",
    "decode_labels",
    "decode_transactions",
    "load_settings",
]

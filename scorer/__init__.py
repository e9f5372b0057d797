"""scorer: a real-time streaming fraud scorer (Kafka in, decisions out, ONNX in-process).

The public API for using the scorer from Python (everything else is internal and may move):

    from scorer import Settings, OnnxModel, Scorer, Serving, CustomerStore, TerminalTable, MemorySource

    model = OnnxModel("models/default/2")
    config = model.meta.feature_config
    core = Scorer(Settings(), Serving(model), CustomerStore(config), TerminalTable(config, MemorySource([0])),
                  Metrics(CollectorRegistry(), DEAD_LETTER_REASONS))
    scored = core.score([b'{"transaction_id": ...}'], numpy.zeros(1, dtype=numpy.int64))

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
from scorer.scoring.core import DEAD_LETTER_REASONS, DeadLetter, Scored, Scorer
from scorer.scoring.customers import CustomerStore
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

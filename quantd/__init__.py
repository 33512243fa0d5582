"""quantd: a file queue and supervisor for multi-stage research pipelines.

Workers use :class:`Worker` to push, claim, complete, fail and route items;
``quantd run`` supervises a tree. Importing quantd configures no logging.
"""

from quantd.config import Config, Stage, load_config, reference_config
from quantd.errors import (
    ClaimLost,
    ConfigError,
    InvalidId,
    InvalidItem,
    QuantdError,
    QueueNotFound,
    RoutingError,
    TreeError,
)
from quantd.items import Item, ItemStatus, Priority, validate_id
from quantd.tree import Tree, init_tree, open_tree
from quantd.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "ClaimLost",
    "Config",
    "ConfigError",
    "InvalidId",
    "InvalidItem",
    "Item",
    "ItemStatus",
    "Priority",
    "QuantdError",
    "QueueNotFound",
    "RoutingError",
    "Stage",
    "Tree",
    "TreeError",
    "Worker",
    "__version__",
    "init_tree",
    "load_config",
    "open_tree",
    "reference_config",
    "validate_id",
]

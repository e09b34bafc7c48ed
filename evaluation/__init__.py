"""byola's downstream evaluation (installed as ``byola.evaluation``): tasks as data, EVAR's linear-probe protocol
made exact, reports, dataset preparation and a HEAR-module checker.

Modules: ``tasks`` (CSV + spec, folds), ``embedders`` (the interface the protocol drives, log-mel baseline),
``probe`` (linear / MLP / kNN probes), ``run`` (cropping, cached embeddings, ``evaluate``), ``report``,
``prepare`` (official dataset layouts → metadata CSV + 16 kHz copies), ``hear_check``.
"""
from .embedders import ClipEmbedder, LogMelStatsEmbedder, ModelEmbedder
from .probe import ProbeConfig
from .run import TaskResult, evaluate, run_task
from .tasks import Task, TaskError, TaskSpec, builtin_specs, load_task

__all__ = ["ClipEmbedder", "LogMelStatsEmbedder", "ModelEmbedder", "ProbeConfig", "Task", "TaskError", "TaskResult",
           "TaskSpec", "builtin_specs", "evaluate", "load_task", "run_task"]

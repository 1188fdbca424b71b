"""``raee.v1`` common messages: task infos, task specs and per-item errors."""

from __future__ import annotations

from raee.serving.errors import status_code_value, status_of
from raee.store import TaskVersion
from raee.tasks import TaskSpec
from raee.v1 import common_pb2


def task_info(version: TaskVersion) -> common_pb2.TaskInfo:
    spec = version.spec
    return common_pb2.TaskInfo(
        task=version.task,
        version=version.version,
        spec=common_pb2.TaskSpec(
            name=spec.name,
            template=spec.template,
            labels=[common_pb2.Label(name=label.name, word=label.word) for label in spec.labels],
            metric=spec.metric.value,
        ),
        backbone_id=version.backbone_id,
        encoder_id=version.encoder_id,
        num_layers=version.num_layers,
        points=version.points,
        created_at=version.created_at,
        with_correct_exit_pct=float(version.stats.get("with_correct_exit_pct", 0.0)),
        accuracy_per_exit_pct=list(version.stats.get("accuracy_per_exit_pct", [])),
    )


def task_spec(message: common_pb2.TaskSpec, source: str) -> TaskSpec:
    """The domain spec of a ``TaskSpec`` message, validated like a spec file."""
    return TaskSpec.parse(
        {
            "name": message.name,
            "template": message.template,
            "labels": [{"name": label.name, "word": label.word} for label in message.labels],
            "metric": message.metric,
        },
        source=source,
    )


def error(exception: BaseException) -> common_pb2.Error:
    """A per-item error of a batch answer, with the status the same error would get alone."""
    code, message = status_of(exception)
    return common_pb2.Error(code=status_code_value(code), message=message)

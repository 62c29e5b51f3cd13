"""Which secret files a task gets: named by the reference's target (or the secret's name), never outside
the secrets directory, and only secrets the manager sent."""

from __future__ import annotations

import pytest

from agent.errors import ExecutorError
from agent.secrets import secret_files, secrets_dir
from api import Secret, Task
from api.objects import Annotations, ContainerSpec, Meta, SecretReference, SecretSpec, TaskSpec

SECRETS = {"s1": Secret(meta=Meta(id="s1"), spec=SecretSpec(annotations=Annotations(name="db"), data=b"pw"))}


def task_using(*refs: SecretReference) -> Task:
    return Task(meta=Meta(id="t1"), spec=TaskSpec(container=ContainerSpec(image="busybox", secrets=refs)))


def test_files_are_named_by_target_or_secret_name() -> None:
    assert secret_files(task_using(SecretReference(secret_id="s1")), SECRETS) == {"db": b"pw"}
    assert secret_files(task_using(SecretReference(secret_id="s1", target="x")), SECRETS) == {"x": b"pw"}
    assert secret_files(task_using(), SECRETS) == {}


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (SecretReference(secret_id="gone", secret_name="gone"), "secret gone is not available"),
        (SecretReference(secret_id="s1", target="../etc/passwd"), "invalid secret file name"),
        (SecretReference(secret_id="s1", target=".."), "invalid secret file name"),
    ],
)
def test_missing_secrets_and_escaping_names_are_refused(ref: SecretReference, message: str) -> None:
    with pytest.raises(ExecutorError, match=message):
        secret_files(task_using(ref), SECRETS)


def test_task_ids_cannot_leave_the_secrets_root() -> None:
    with pytest.raises(ValueError):
        secrets_dir("../x")

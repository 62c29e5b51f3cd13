"""``swarmctl stack …`` against a real manager with simulated nodes: deploy, redeploy, prune, rm, refusals."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmctl.client import Client
from swarmctl.stack import convert, deploy, loader
from swarmctl.stack.errors import DeployError
from tests.integration.swarmctl.conftest import Cluster, Run, column, names, one_error_line

EXAMPLES = Path(__file__).parents[3] / "examples" / "stacks"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster")
    (tmp_path / "cluster").mkdir()
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def web_yml(tmp_path: Path) -> Path:
    """The example stack, copied with its secret file."""
    for name in ("web.yml", "api-key.txt"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    return tmp_path / "web.yml"


def inventory(c: Cluster) -> tuple[list[str], list[str], list[str], list[str]]:
    """Every service, network, secret and volume name in the cluster."""
    return (
        c.ok("service", "ls", "--format", "{{.Name}}").lines(),
        c.ok("network", "ls", "--format", "{{.Name}}").lines(),
        c.ok("secret", "ls", "--format", "{{.Name}}").lines(),
        c.ok("volume", "ls", "-q").lines(),
    )


def task_ids(c: Cluster, service: str) -> set[str]:
    return set(c.ok("service", "ps", "-q", "--filter", "desired-state=running", service).lines())


def test_deploy_redeploy_update_one_prune_and_rm(cluster: Cluster, web_yml: Path, tmp_path: Path) -> None:
    r = cluster.ok("stack", "deploy", "-c", str(web_yml), "web")
    created = [line for line in r.lines() if line.startswith("Creating")]
    assert created == [
        "Creating network web_backend",
        "Creating volume web_cache-data",
        "Creating secret web_api-key",
        "Creating service web_cache",  # web and worker depend on it
        "Creating service web_web",
        "Creating service web_worker",
    ]
    for svc, n in (("web_cache", 1), ("web_web", 2), ("web_worker", 2)):
        assert f"{svc}: {n}/{n} running, converged" in r.err

    ls = cluster.ok("stack", "ls")
    assert names(ls) == ["web"] and column(ls, "SERVICES") == ["3"]
    services = cluster.ok("stack", "services", "web")
    assert names(services) == ["web_cache", "web_web", "web_worker"]
    assert column(services, "REPLICAS") == ["1/1", "2/2", "2/2 (max 1 per node)"]
    assert column(services, "PORTS") == ["", "*:8080->80/tcp", ""]
    assert len(cluster.ok("stack", "ps", "-q", "web").lines()) == 5
    labels = cluster.ok(
        "network",
        "inspect",
        "--format",
        '{{index .Spec.Annotations.Labels "com.docker.stack.namespace"}}',
        "web_backend",
    )
    assert labels.out == "web\n"
    aliases = cluster.ok("service", "inspect", "--format", "{{json .Spec.Task.Networks}}", "web_cache").out
    assert '"aliases":["cache","redis"]' in aliases

    # The same file again changes nothing.
    before = {s: task_ids(cluster, s) for s in ("web_cache", "web_web", "web_worker")}
    versions = cluster.ok("service", "ls", "--format", "{{.Name}}").lines()
    r = cluster.ok("stack", "deploy", "-c", str(web_yml), "web")
    assert "Stack web is up to date" in r.out
    assert {s: task_ids(cluster, s) for s in before} == before
    assert cluster.ok("service", "ls", "--format", "{{.Name}}").lines() == versions

    # A change to one service rolls only that one.
    r = cluster.run("stack", "deploy", "-c", str(web_yml), "web", env={"NGINX_TAG": "1.27-alpine"})
    assert r.code == 0, r.err
    assert [line for line in r.lines() if line.startswith(("Creating", "Updating"))] == [
        "Updating service web_web"
    ]
    assert task_ids(cluster, "web_cache") == before["web_cache"]
    assert task_ids(cluster, "web_worker") == before["web_worker"]
    assert task_ids(cluster, "web_web").isdisjoint(before["web_web"])
    image = cluster.ok("service", "inspect", "--format", "{{.Spec.Task.Container.Image}}", "web_web").out
    assert image == "nginx:1.27-alpine\n"

    # --prune removes what the file no longer has.
    smaller = tmp_path / "smaller.yml"
    smaller.write_text(
        web_yml.read_text().split("  worker:")[0] + "networks:\n  backend:\nvolumes:\n  cache-data:\n"
    )
    r = cluster.ok("stack", "deploy", "--prune", "-c", str(smaller), "web")
    assert "Removing service web_worker" in r.out
    assert names(cluster.ok("stack", "services", "web")) == ["web_cache", "web_web"]

    # rm takes the stack's services, networks and secrets, and nothing of anyone else's.
    cluster.ok("service", "create", "--detach", "--name", "outsider", "busybox")
    cluster.ok("network", "create", "keep-net")
    r = cluster.ok("stack", "rm", "web")
    assert r.lines() == [
        "Removing service web_cache",
        "Removing service web_web",
        "Removing secret web_api-key",
        "Removing network web_backend",
    ]
    left, networks, _, volumes = inventory(cluster)
    # The routing mesh's network stays, as Docker's ingress does (the stack published a port).
    assert left == ["outsider"] and networks == ["ingress", "keep-net"]
    assert volumes == ["web_cache-data"]  # volumes keep their data, as with docker
    one_error_line(cluster.run("stack", "rm", "web"), "nothing found in stack: web")
    one_error_line(cluster.run("stack", "ps", "web"), "nothing found in stack: web")


MALFORMED = {
    "bad-type": (
        "services:\n  web:\n    image: nginx\n    deploy:\n      replicas: two\n",
        "stack.yml:5 services.web.deploy.replicas: must be an integer",
    ),
    "undeclared-network": (
        "services:\n  web:\n    image: nginx\n    networks: [front]\n",
        "network 'front' is not declared",
    ),
    "bad-constraint": (
        "services:\n  web:\n    image: nginx\n  db:\n    image: pg\n    deploy:\n      placement:\n "
        "       constraints: [zone=eu]\n",
        "stack.yml:8 services.db.deploy.placement.constraints[0]: invalid expression 'zone=eu'",
    ),
    "missing-secret-file": (
        "services:\n  web:\n    image: nginx\n    secrets: [k]\nsecrets:\n  k:\n    file: ./none\n",
        "cannot read secret file",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_an_invalid_file_creates_nothing(cluster: Cluster, tmp_path: Path, case: str) -> None:
    text, words = MALFORMED[case]
    (tmp_path / "stack.yml").write_text(text)
    r = cluster.run("stack", "deploy", "-c", str(tmp_path / "stack.yml"), "bad")
    one_error_line(r, words)
    assert r.code == 1
    assert inventory(cluster) == ([], [], [], [])


def test_external_objects_must_exist_before_anything_is_created(cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "s.yml").write_text(
        "services:\n  web:\n    image: nginx\n    networks: [front, shared]\n"
        "networks:\n  front: {}\n  shared:\n    external: true\n"
    )
    one_error_line(
        cluster.run("stack", "deploy", "-c", str(tmp_path / "s.yml"), "st"),
        "network 'shared' is declared as external, but could not be found",
    )
    assert inventory(cluster) == ([], [], [], [])
    cluster.ok("network", "create", "shared")
    cluster.ok("stack", "deploy", "-c", str(tmp_path / "s.yml"), "st")
    targets = cluster.ok("service", "inspect", "--format", "{{json .Spec.Task.Networks}}", "st_web").out
    assert '"target":"st_front"' in targets and '"target":"shared"' in targets


def test_names_outside_the_stack_are_not_taken_over(cluster: Cluster, tmp_path: Path) -> None:
    cluster.ok("service", "create", "--detach", "--name", "st_web", "busybox")
    (tmp_path / "s.yml").write_text("services:\n  web:\n    image: nginx\n")
    one_error_line(
        cluster.run("stack", "deploy", "-c", str(tmp_path / "s.yml"), "st"),
        "service 'st_web' exists already and is not part of stack st",
    )
    assert inventory(cluster)[:2] == (["st_web"], [])


def test_a_refused_service_undoes_the_deploy(cluster: Cluster, tmp_path: Path) -> None:
    """The manager refuses the second service (someone took its name meanwhile): the first goes again."""
    (tmp_path / "s.yml").write_text(
        "services:\n  api:\n    image: nginx\n  db:\n    image: pg\nnetworks:\n  default:\n   "
        " attachable: true\n"
    )
    plan = convert.plan(loader.load([str(tmp_path / "s.yml")], env={}), "st", env={})
    client = Client(cluster.host)

    def say(message: str) -> None:
        if message == "Creating service st_db":  # a concurrent user, right before our create
            cluster.ok("service", "create", "--detach", "--name", "st_db", "busybox")

    with pytest.raises(DeployError) as info:
        deploy.deploy(client, plan, say=say)
    assert str(info.value) == (
        "creating service st_db: service st_db already exists "
        "(removed what this deploy had created: service st_api, network st_default)"
    )
    assert inventory(cluster)[:2] == (["st_db"], [])


def test_deploy_from_stdin_and_config(cluster: Cluster) -> None:
    text = (
        "version: '3.8'\nservices:\n  hello:\n    image: busybox\n"
        "    command: echo ${GREETING:-hi}\n    restart: always\n"
    )
    r: Run = cluster.run("stack", "deploy", "-c", "-", "demo", input=text)
    assert r.code == 0, r.err
    assert "Warning: -: service hello: ignoring unsupported options: restart" in r.err
    assert (
        cluster.ok("service", "inspect", "--format", "{{json .Spec.Task.Container.Args}}", "demo_hello").out
        == '["echo","hi"]\n'
    )
    r = cluster.run("stack", "config", "-c", "-", input=text, env={"GREETING": "hello"})
    assert "command: echo hello" in r.out

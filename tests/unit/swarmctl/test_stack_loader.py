"""The stack loader: valid files, interpolation, merging, and malformed files with their messages."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from api.objects import EndpointMode, MountType, RestartCondition, ServiceMode, UpdateOrder
from swarmctl.stack import convert, loader
from swarmctl.stack.deploy import spec_digest
from swarmctl.stack.errors import StackFileError
from swarmctl.stack.model import IMAGE_LABEL, NAMESPACE_LABEL, StackPlan

EXAMPLE = Path(__file__).parents[3] / "examples" / "stacks" / "web.yml"


def write(tmp: Path, text: str, name: str = "stack.yml") -> str:
    path = tmp / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def load_plan(tmp: Path, text: str, env: dict[str, str] | None = None, stack: str = "st") -> StackPlan:
    return convert.plan(loader.load([write(tmp, text)], env=env or {}), stack, env=env or {})


def problems(tmp: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    """The problem lines a file gives, with the temporary directory stripped."""
    with pytest.raises(StackFileError) as info:
        load_plan(tmp, text, env)
    return [str(p).replace(f"{tmp}/", "") for p in info.value.problems]


# --- valid files -----------------------------------------------------------------------------------------
def test_minimal_service_gets_names_labels_and_the_default_network(tmp_path: Path) -> None:
    plan = load_plan(tmp_path, "services:\n  web:\n    image: nginx\n")
    (svc,) = plan.services
    assert svc.name == "st_web"
    assert svc.spec.annotations.labels[NAMESPACE_LABEL] == "st"
    assert svc.spec.annotations.labels[IMAGE_LABEL] == "nginx"
    assert svc.spec.task.container.labels[NAMESPACE_LABEL] == "st"
    (att,) = svc.spec.task.networks
    assert (att.target, att.aliases) == ("st_default", ("web",))
    (net,) = plan.networks
    assert net.name == "st_default" and net.spec is not None and net.spec.driver == "overlay"
    assert net.spec.annotations.labels == {NAMESPACE_LABEL: "st"}
    assert svc.spec.replicas == 1 and svc.spec.mode is ServiceMode.REPLICATED


def test_the_example_stack(tmp_path: Path) -> None:
    plan = convert.plan(loader.load([str(EXAMPLE)], env={}), "demo", env={})
    assert [s.name for s in plan.services] == ["demo_cache", "demo_web", "demo_worker"]  # depends_on first
    by_name = {s.name: s.spec for s in plan.services}
    web, cache, worker = by_name["demo_web"], by_name["demo_cache"], by_name["demo_worker"]
    assert web.task.container.image == "nginx:1.25-alpine"
    assert web.replicas == 2 and web.endpoint.mode is EndpointMode.VIP
    assert [(p.published_port, p.target_port) for p in web.endpoint.ports] == [(8080, 80)]
    assert web.task.resources.limits.nano_cpus == 500_000_000
    assert web.task.resources.limits.memory_bytes == 128 << 20
    assert web.task.resources.reservations.memory_bytes == 64 << 20
    assert web.update_config.delay_ns == 5_000_000_000 and web.update_config.order is UpdateOrder.START_FIRST
    assert web.task.restart_policy.condition is RestartCondition.ON_FAILURE
    assert web.task.restart_policy.max_attempts == 3
    assert web.task.placement.preferences[0].spread == "node.labels.zone"
    hc = web.task.container.healthcheck
    assert hc is not None and hc.test[0] == "CMD" and hc.interval_ns == 10_000_000_000
    assert set(web.task.container.env) == {"CACHE_HOST=cache", "CACHE_PORT=6379"}
    assert cache.task.container.args == ("redis-server", "--appendonly", "yes")
    assert cache.task.networks[0].aliases == ("cache", "redis")
    (mount,) = cache.task.container.mounts
    assert (mount.type, mount.source, mount.target) == (MountType.VOLUME, "demo_cache-data", "/data")
    assert worker.task.container.args == ("sh", "-c", "while true; do echo working; sleep 30; done")
    assert worker.task.placement.max_replicas == 1
    (ref,) = worker.task.container.secrets
    assert (ref.secret_name, ref.target) == ("demo_api-key", "api_key")
    assert [n.name for n in plan.networks] == ["demo_backend"]
    (secret,) = plan.secrets
    assert secret.spec is not None and secret.spec.data == b"example-key\n"
    assert [v.name for v in plan.volumes] == ["demo_cache-data"]


def test_long_and_short_forms(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    plan = load_plan(
        tmp_path,
        """
        services:
          app:
            image: app
            entrypoint: /bin/app --serve
            environment: [A=1, B]
            labels: [tier=back]
            ports:
              - 80
              - target: 53
                published: 5353
                protocol: udp
                mode: host
            volumes:
              - ./conf:/etc/app:ro
              - /scratch
              - type: tmpfs
                target: /tmp
            networks:
              front:
                aliases: [api]
            deploy:
              mode: global
              labels: {team: core}
              placement:
                constraints: [node.role==worker]
        networks:
          front:
            external: true
            name: shared-front
        """,
        env={"B": "from-shell"},
    )
    (svc,) = plan.services
    c = svc.spec.task.container
    assert c.command == ("/bin/app", "--serve")
    assert set(c.env) == {"A=1", "B=from-shell"}
    assert c.labels["tier"] == "back" and svc.spec.annotations.labels["team"] == "core"
    assert [
        (p.target_port, p.published_port, p.protocol.value, p.publish_mode.value)
        for p in svc.spec.endpoint.ports
    ] == [
        (80, 0, "tcp", "ingress"),
        (53, 5353, "udp", "host"),
    ]
    binds = [(m.type, m.source, m.target, m.read_only) for m in c.mounts]
    assert binds == [
        (MountType.BIND, str(tmp_path / "conf"), "/etc/app", True),
        (MountType.VOLUME, "", "/scratch", False),
        (MountType.TMPFS, "", "/tmp", False),
    ]
    assert svc.spec.mode is ServiceMode.GLOBAL and svc.spec.replicas == 0
    assert svc.spec.task.networks[0].target == "shared-front"
    assert plan.networks[0].spec is None  # external: must exist, never created


# --- interpolation ---------------------------------------------------------------------------------------
def test_interpolation_forms(tmp_path: Path) -> None:
    env = {"TAG": "1.2", "EMPTY": "", "N": "4"}
    plan = load_plan(
        tmp_path,
        """
        services:
          web:
            image: "nginx:${TAG}"
            command: ["echo", "$TAG", "${EMPTY:-dflt}", "${EMPTY-kept}",
                      "${UNSET-other}", "$$HOME", "${TAG:+set}"]
            deploy:
              replicas: ${N:-2}
        """,
        env,
    )
    (svc,) = plan.services
    assert svc.spec.task.container.image == "nginx:1.2"
    assert svc.spec.task.container.args == ("echo", "1.2", "dflt", "", "other", "$HOME", "set")
    assert svc.spec.replicas == 4


def test_unset_variables_warn_and_dotenv_fills_in(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("# defaults\nTAG=from-dotenv\nREPLICAS='3'\n")
    text = (
        "services:\n  web:\n    image: nginx:${TAG}\n    hostname: ${HOST}\n"
        "    deploy:\n      replicas: ${REPLICAS}\n"
    )
    config = loader.load([write(tmp_path, text)], env={})
    assert config.services["web"]["image"] == "nginx:from-dotenv"
    assert config.services["web"]["deploy"]["replicas"] == 3
    assert config.warnings == ("The HOST variable is not set. Defaulting to a blank string.",)
    config = loader.load([str(tmp_path / "stack.yml")], env={"TAG": "from-env"})
    assert config.services["web"]["image"] == "nginx:from-env"  # the environment wins over .env


# --- merging ---------------------------------------------------------------------------------------------
def test_several_files_merge_in_order(tmp_path: Path) -> None:
    base = write(
        tmp_path,
        """
        version: "3.8"
        services:
          web:
            image: nginx:1
            environment: {A: "1", B: "1"}
            ports: ["80"]
            volumes: ["data:/data", "logs:/logs"]
            deploy:
              replicas: 2
              placement: {constraints: [node.role==worker]}
        volumes: {data: {}, logs: {}}
        """,
        "base.yml",
    )
    override = write(
        tmp_path,
        """
        services:
          web:
            image: nginx:2
            environment: [B=2, C=3]
            ports: ["443"]
            volumes: ["other:/data"]
            deploy:
              placement: {constraints: [node.labels.zone==eu]}
          cache:
            image: redis
        volumes: {other: {}}
        """,
        "override.yml",
    )
    config = loader.load([base, override], env={})
    web = config.services["web"]
    assert web["image"] == "nginx:2"
    assert dict(web["environment"]) == {"A": "1", "B": "2", "C": "3"}
    assert web["ports"] == ("80", "443")
    assert web["volumes"] == ("other:/data", "logs:/logs")
    assert web["deploy"]["replicas"] == 2
    assert web["deploy"]["placement"]["constraints"] == ("node.role==worker", "node.labels.zone==eu")
    assert set(config.services) == {"web", "cache"}
    with pytest.raises(TypeError):
        config.services["web"]["image"] = "x"  # type: ignore[index]


def test_problems_name_the_file_they_are_in(tmp_path: Path) -> None:
    base = write(tmp_path, "services:\n  web:\n    image: nginx\n", "base.yml")
    override = write(tmp_path, "services:\n  web:\n    deploy:\n      replicas: many\n", "override.yml")
    with pytest.raises(StackFileError) as info:
        loader.load([base, override], env={})
    assert str(info.value) == f"{override}:4 services.web.deploy.replicas: must be an integer (got 'many')"


def test_ignored_keys_are_warnings_not_errors(tmp_path: Path) -> None:
    text = "services:\n  web:\n    image: nginx\n    build: .\n    restart: always\n    container_name: w\n"
    config = loader.load([write(tmp_path, text)], env={})
    assert "build" not in config.services["web"]
    (warning,) = config.warnings
    assert warning.endswith("service web: ignoring unsupported options: build, container_name, restart")


def test_config_digest_tells_changes_apart(tmp_path: Path) -> None:
    one = load_plan(tmp_path, "services:\n  web:\n    image: nginx:1\n").services[0].spec
    again = load_plan(tmp_path, "services:\n  web:\n    image: nginx:1\n").services[0].spec
    two = load_plan(tmp_path, "services:\n  web:\n    image: nginx:2\n").services[0].spec
    assert spec_digest(one) == spec_digest(again) != spec_digest(two)


# --- malformed files -------------------------------------------------------------------------------------
WEB = "services:\n  web:\n    image: nginx\n"

MALFORMED = [
    (
        "replicas-type",
        WEB + "    deploy:\n      replicas: three\n",
        "stack.yml:5 services.web.deploy.replicas: must be an integer (got 'three')",
    ),
    (
        "replicas-negative",
        WEB + "    deploy:\n      replicas: -1\n",
        "stack.yml:5 services.web.deploy.replicas: must be at least 0 (got -1)",
    ),
    (
        "typo-key",
        "services:\n  web:\n    imgae: nginx\n",
        "stack.yml:3 services.web.imgae: unsupported key 'imgae' (did you mean 'image'?)",
    ),
    (
        "typo-top",
        "servces:\n  web:\n    image: nginx\n",
        "stack.yml:1 servces: unsupported key 'servces' (did you mean 'services'?)",
    ),
    (
        "mode-enum",
        WEB + "    deploy:\n      mode: replicted\n",
        "stack.yml:5 services.web.deploy.mode: must be one of: replicated, global (got 'replicted')",
    ),
    (
        "port-host-ip",
        WEB + "    ports:\n      - 127.0.0.1:80:80\n",
        "stack.yml:5 services.web.ports[0]: must be a port such as 80, 8080:80 or 8080:80/udp (got"
        " '127.0.0.1:80:80')",
    ),
    (
        "port-long-no-target",
        WEB + "    ports:\n      - published: 80\n",
        "stack.yml:5 services.web.ports[0]: missing required key 'target'",
    ),
    (
        "port-published-type",
        WEB + "    ports:\n      - target: 80\n        published: x\n",
        "stack.yml:6 services.web.ports[0].published: must be an integer (got 'x')",
    ),
    (
        "port-range",
        WEB + "    ports:\n      - 8000-8001:80\n",
        "stack.yml:5 services.web.ports[0]: invalid port '8000-8001:80': published and target ranges"
        " differ in size",
    ),
    (
        "undeclared-network",
        WEB + "    networks: [front]\n",
        "stack.yml:4 services.web.networks.front: network 'front' is not declared under the"
        " top-level networks",
    ),
    (
        "undeclared-volume",
        WEB + "    volumes: ['data:/data']\n",
        "stack.yml:4 services.web.volumes[0]: volume 'data' is not declared under the top-level volumes",
    ),
    (
        "undeclared-secret",
        WEB + "    secrets: [key]\n",
        "stack.yml:4 services.web.secrets[0]: secret 'key' is not declared under the top-level secrets",
    ),
    (
        "secret-without-source",
        WEB + "secrets:\n  key: {}\n",
        "stack.yml:5 secrets.key: a secret needs either file: or external: true",
    ),
    (
        "secret-file-missing",
        WEB + "secrets:\n  key:\n    file: ./nope.txt\n",
        "stack.yml:6 secrets.key.file: cannot read secret file nope.txt",
    ),
    (
        "depends-on-unknown",
        WEB + "    depends_on: [db]\n",
        "stack.yml:4 services.web.depends_on[0]: service 'db' is not defined",
    ),
    (
        "depends-on-cycle",
        "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n",
        "dependency cycle",
    ),
    (
        "missing-image",
        "services:\n  web:\n    hostname: w\n",
        "stack.yml:2 services.web: missing image (Shoal runs images; it does not build them)",
    ),
    (
        "no-services",
        "version: '3'\nnetworks:\n  front: {}\n",
        "stack.yml: services: the stack defines no services",
    ),
    ("bad-yaml", "services:\n  web:\n    image: nginx\n   ports: []\n", "stack.yml:4: invalid YAML"),
    ("top-level-list", "- web\n", "stack.yml:1: the top level must be a mapping"),
    (
        "version-2",
        "version: '2.4'\n" + WEB,
        "stack.yml:1 version: must be 3 or 3.x (Compose file format 3) (got '2.4')",
    ),
    (
        "configs",
        WEB + "configs:\n  conf:\n    file: x\n",
        "stack.yml:4 configs: configs are not supported by Shoal (use secrets, or bake the file into"
        " the image)",
    ),
    (
        "bridge-network",
        WEB + "networks:\n  n:\n    driver: bridge\n",
        "stack.yml:6 networks.n.driver: must be overlay (stacks span hosts) (got 'bridge')",
    ),
    (
        "grace-type",
        WEB + "    stop_grace_period: 10\n",
        "stack.yml:4 services.web.stop_grace_period: must be a duration such as 10s, 1m30s or 500ms (got 10)",
    ),
    (
        "interval-format",
        WEB + "    healthcheck:\n      interval: 10 seconds\n",
        "stack.yml:5 services.web.healthcheck.interval: must be a duration such as 10s, 1m30s or"
        " 500ms (got '10 seconds')",
    ),
    (
        "memory",
        WEB + "    deploy:\n      resources:\n        limits:\n          memory: lots\n",
        "stack.yml:7 services.web.deploy.resources.limits.memory: must be a size such as 512M, 1G or"
        " 1048576 (got 'lots')",
    ),
    (
        "cpus",
        WEB + "    deploy:\n      resources:\n        limits:\n          cpus: half\n",
        "stack.yml:7 services.web.deploy.resources.limits.cpus: must be a number of CPUs such as 0.5"
        " or 2 (got 'half')",
    ),
    (
        "restart-condition",
        WEB + "    deploy:\n      restart_policy:\n        condition: always\n",
        "stack.yml:6 services.web.deploy.restart_policy.condition: must be one of: none, on-failure,"
        " any (got 'always')",
    ),
    (
        "failure-ratio",
        WEB + "    deploy:\n      update_config:\n        max_failure_ratio: 2\n",
        "stack.yml:6 services.web.deploy.update_config.max_failure_ratio: must be at most 1 (got 2)",
    ),
    (
        "rollback-action",
        WEB + "    deploy:\n      rollback_config:\n        failure_action: rollback\n",
        "stack.yml:6 services.web.deploy.rollback_config.failure_action: must be one of: continue,"
        " pause (got 'rollback')",
    ),
    (
        "constraint-syntax",
        WEB + "    deploy:\n      placement:\n        constraints: ['node.labels.zone=eu']\n",
        "stack.yml:6 services.web.deploy.placement.constraints[0]: invalid expression 'node.labels.zone=eu'",
    ),
    (
        "preference",
        WEB + "    deploy:\n      placement:\n        preferences:\n          - spread: zone\n",
        "stack.yml:7 services.web.deploy.placement.preferences[0].spread: invalid expression 'spread=zone'",
    ),
    (
        "environment-type",
        WEB + "    environment: 5\n",
        "stack.yml:4 services.web.environment: must be a mapping or a list (got 5)",
    ),
    (
        "duplicate-key",
        "services:\n  web:\n    image: nginx\n    image: httpd\n",
        "stack.yml:4 services.web.image: duplicate key",
    ),
    (
        "required-variable",
        "services:\n  web:\n    image: nginx:${TAG:?set TAG to the release}\n",
        "stack.yml:3 services.web.image: required variable TAG is missing a value: set TAG to the release",
    ),
    (
        "bad-interpolation",
        "services:\n  web:\n    image: nginx:${TAG\n",
        "stack.yml:3 services.web.image: invalid interpolation format in 'nginx:${TAG'",
    ),
    (
        "global-with-replicas",
        WEB + "    deploy:\n      mode: global\n      replicas: 2\n",
        "stack.yml:6 services.web.deploy.replicas: replicas can only be used with replicated mode",
    ),
    (
        "service-name",
        "services:\n  web app:\n    image: nginx\n",
        "stack.yml:2 services.web app: is not a valid service name",
    ),
    (
        "subnet",
        WEB + "    networks: [n]\nnetworks:\n  n:\n    ipam:\n      config:\n        - subnet: 10.0.0.0/33\n",
        "stack.yml:9 networks.n.ipam.config[0].subnet: invalid subnet",
    ),
    (
        "gateway-outside",
        WEB + "networks:\n  n:\n    ipam:\n      config:\n        - subnet: 10.9.0.0/24\n         "
        " gateway: 10.8.0.1\n",
        "stack.yml:9 networks.n.ipam.config[0].gateway: 10.8.0.1 is not in subnet 10.9.0.0/24",
    ),
    (
        "env-file-missing",
        WEB + "    env_file: missing.env\n",
        "stack.yml:4 services.web.env_file[0]: cannot read env file",
    ),
    (
        "volume-syntax",
        WEB + "    volumes: ['/a:/b:ro:extra']\n",
        "stack.yml:4 services.web.volumes[0]: invalid volume '/a:/b:ro:extra' (use [source:]target[:ro])",
    ),
    (
        "command-type",
        WEB + "    command: 5\n",
        "stack.yml:4 services.web.command: must be a string or a list (got 5)",
    ),
    (
        "non-string-key",
        WEB + "    environment:\n      80: x\n",
        "stack.yml:5 services.web.environment.80: keys must be strings",
    ),
    (
        "static-ip",
        WEB + "    networks:\n      n:\n        ipv4_address: 10.0.0.5\nnetworks:\n  n: {}\n",
        "stack.yml:6 services.web.networks.n.ipv4_address: static addresses are not supported in stacks",
    ),
    ("empty-file", "", "stack.yml: the file is empty"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_files_say_where_and_what(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text)
    assert any(expected in p for p in found), found


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path, "services:\n  web:\n    imgae: nginx\n    deploy:\n      replicas: x\n  db:\n    image: 5\n"
    )
    assert len(found) == 3
    assert [p.split(" ")[0] for p in found] == ["stack.yml:3", "stack.yml:5", "stack.yml:7"]


def test_bad_stack_names(tmp_path: Path) -> None:
    config = loader.load([write(tmp_path, WEB)], env={})
    with pytest.raises(StackFileError, match="invalid stack name 'my stack'"):
        convert.plan(config, "my stack")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(StackFileError, match=r"nope\.yml: cannot read the file: No such file or directory"):
        loader.load([str(tmp_path / "nope.yml")])

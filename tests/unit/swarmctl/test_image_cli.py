"""``swarmctl image …`` against canned manager answers: which nodes it asks, what it prints, how it exits."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.objects import NodeState
from swarmctl.commands.image import image_matches, image_rows, split_tag
from tests.unit.swarmctl.fake_manager import (
    FakeManager,
    Reply,
    error,
    fake_manager,
    json_lines,
    node,
    node_ref,
)

N1 = node_ref("n1aaaaaaaaaaaaaaaaaaaaaa", "node-1", "10.0.0.1")
N2 = node_ref("n2bbbbbbbbbbbbbbbbbbbbbb", "node-2", "10.0.0.2")
N3 = node_ref("n3cccccccccccccccccccccc", "node-3", "10.0.0.3")
BUSYBOX = "sha256:" + "b" * 64
APP = "sha256:" + "a" * 64


def img(
    ident: str, tags: list[str], node: dict[str, str], created: int, size: int, **extra: Any
) -> dict[str, Any]:
    return {
        "Id": ident,
        "RepoTags": tags,
        "RepoDigests": [],
        "Created": created,
        "Size": size,
        "Node": node,
        **extra,
    }


def images() -> list[dict[str, Any]]:
    """Four images on two nodes, made at times relative to when the test runs (not when it was collected)."""
    now = int(time.time())
    return [
        img(BUSYBOX, ["busybox:latest"], N1, now - 86400 * 20, 4_261_000),
        img(BUSYBOX, ["busybox:latest", "10.0.0.9:5000/busybox:latest"], N2, now - 86400 * 20, 4_261_000),
        img(APP, ["10.0.0.9:5000/team/app:v1"], N2, now - 300, 12_345_678),
        img("sha256:" + "c" * 64, [], N1, now - 7200, 1234, RepoDigests=["old@sha256:" + "d" * 64]),
    ]


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeManager]:
    with fake_manager(tmp_path) as f:
        nodes = [
            node(N1["ID"], "node-1", "10.0.0.1"),
            node(N2["ID"], "node-2", "10.0.0.2"),
            node(N3["ID"], "node-3", "10.0.0.3", NodeState.DOWN),
        ]
        f.route("GET", "/nodes", Reply(body=nodes))
        f.route("GET", "/images/json", Reply(body=images()))
        yield f


def engine(node: dict[str, str], path: str) -> str:
    return f"/nodes/{node['ID']}/engine{path}"


# --- names and rows --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ref", "matches"),
    [
        ("busybox", True),
        ("busybox:latest", True),
        ("docker.io/library/busybox", True),
        ("bbbbbbbb", True),
        ("sha256:bbbb", True),
        ("busybox:1.36", False),
        ("10.0.0.9:5000/busybox", True),
        ("bb", False),  # too short to be an id prefix
    ],
)
def test_image_references_match_as_docker_resolves_them(ref: str, matches: bool) -> None:
    assert image_matches(images()[1], ref) is matches


def test_tags_split_after_the_last_slash() -> None:
    assert split_tag("10.0.0.9:5000/team/app:v1") == ("10.0.0.9:5000/team/app", "v1")
    assert split_tag("10.0.0.9:5000/team/app") == ("10.0.0.9:5000/team/app", "<none>")


def test_rows_per_tag_per_node_newest_first() -> None:
    rows = image_rows(images())
    assert [(r["Repository"], r["Tag"], r["Node"]) for r in rows] == [
        ("10.0.0.9:5000/team/app", "v1", "node-2"),
        ("old", "<none>", "node-1"),
        ("busybox", "latest", "node-1"),
        ("busybox", "latest", "node-2"),
        ("10.0.0.9:5000/busybox", "latest", "node-2"),
    ]
    assert (
        rows[0]["ID"] == "a" * 12
        and rows[0]["Size"] == "12.3MB"
        and rows[0]["CreatedSince"] == "5 minutes ago"
    )
    assert rows[1]["Digest"] == "sha256:" + "d" * 64
    assert image_rows(images(), no_trunc=True)[0]["ID"] == APP


# --- ls ----------------------------------------------------------------------------------------------------
def test_ls_prints_docker_columns_and_the_node(fake: FakeManager) -> None:
    code, out, _ = fake.run("image", "ls")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE", "NODE"]
    assert lines[1].split() == [
        "10.0.0.9:5000/team/app",
        "v1",
        "a" * 12,
        "5",
        "minutes",
        "ago",
        "12.3MB",
        "node-2",
    ]
    assert lines[3].split()[:3] == ["busybox", "latest", "b" * 12] and lines[3].endswith("4.26MB   node-1")
    assert fake.run("image", "ls", "-q")[1].split() == ["a" * 12, "c" * 12, "b" * 12]
    assert fake.run("image", "ls", "--format", "{{.Repository}}@{{.Node}}", "busybox")[1].split() == [
        "busybox@node-1",
        "busybox@node-2",
    ]


def test_ls_of_one_node_asks_its_engine(fake: FakeManager) -> None:
    fake.route(
        "GET", engine(N2, "/images/json"), Reply(body=[{k: v for k, v in images()[2].items() if k != "Node"}])
    )
    code, out, _ = fake.run("image", "ls", "--node", "node-2", "--format", "json")
    assert code == 0
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["Node"] == "node-2" and row["Tag"] == "v1"
    assert not fake.find("GET", "/images/json")
    code, _, err = fake.run("image", "ls", "--node", "nowhere")
    assert code == 1 and err == "Error: no such node: nowhere\n"


# --- pull ---------------------------------------------------------------------------------------------------
PROGRESS = [
    {"status": "Pulling from library/busybox", "id": "latest"},
    {"status": "Pulling fs layer", "id": "aaa"},
    {"status": "Downloading", "id": "aaa", "progressDetail": {"current": 10, "total": 20}},
    {"status": "Pull complete", "id": "aaa"},
    {"status": "Status: Downloaded newer image for busybox:latest"},
]


def test_pull_goes_to_every_ready_node_and_shows_each_ones_progress(fake: FakeManager) -> None:
    fake.route("POST", engine(N1, "/images/create"), json_lines(*PROGRESS))
    fake.route(
        "POST",
        engine(N2, "/images/create"),
        json_lines({"status": "Status: Image is up to date for busybox:latest"}),
    )
    code, out, err = fake.run("image", "pull", "busybox")
    assert code == 0, err
    assert sorted(out.splitlines()) == [
        "node-1: Downloaded newer image for busybox:latest",
        "node-2: Image is up to date for busybox:latest",
    ]
    assert [line for line in err.splitlines() if line.startswith("node-1")] == [
        "node-1: latest: Pulling from library/busybox",
        "node-1: aaa: Pulling fs layer",
        "node-1: aaa: Downloading",
        "node-1: aaa: Pull complete",
        "node-1: Status: Downloaded newer image for busybox:latest",
    ]
    for n in (N1, N2):
        (req,) = fake.find("POST", engine(n, "/images/create"))
        assert (req.q("fromImage"), req.q("tag")) == ("busybox", "latest")
    assert not fake.find("POST", engine(N3, "/images/create"))  # down


def test_pull_fails_with_one_line_naming_the_nodes_that_failed(fake: FakeManager) -> None:
    fake.route("POST", engine(N1, "/images/create"), json_lines(*PROGRESS))
    fake.route("POST", engine(N2, "/images/create"), json_lines(PROGRESS[0], {"error": "connection refused"}))
    code, out, err = fake.run("image", "pull", "-q", "busybox")
    assert code == 1 and out == ""
    assert err == "Error: pull of busybox failed on node-2: connection refused\n"
    fake.route("POST", engine(N2, "/images/create"), error(404, "manifest unknown"))
    code, out, err = fake.run("image", "pull", "busybox")
    assert code == 1 and out == "node-1: Downloaded newer image for busybox:latest\n"
    assert err.splitlines()[-1] == "Error: pull of busybox failed on node-2: manifest unknown"


def test_pull_skips_nodes_without_containers_unless_named(fake: FakeManager) -> None:
    fake.route("POST", engine(N1, "/images/create"), json_lines(*PROGRESS))
    fake.route("POST", engine(N2, "/images/create"), error(501, "node node-2 runs no containers"))
    code, out, _ = fake.run("image", "pull", "busybox:latest")
    assert code == 0
    assert "node-2: skipped: node node-2 runs no containers" in out.splitlines()
    code, _, err = fake.run("image", "pull", "--node", "node-2", "busybox")
    assert code == 1 and "node node-2 runs no containers" in err


def test_pull_quiet_prints_the_reference(fake: FakeManager) -> None:
    fake.route("POST", engine(N2, "/images/create"), json_lines(*PROGRESS))
    digest = "sha256:" + "e" * 64
    code, out, err = fake.run("image", "pull", "-q", "--node", N2["ID"][:5], f"10.0.0.9:5000/app@{digest}")
    assert (code, out, err) == (0, f"10.0.0.9:5000/app@{digest}\n", "")
    (req,) = fake.find("POST", engine(N2, "/images/create"))
    assert (req.q("fromImage"), req.q("tag")) == ("10.0.0.9:5000/app", digest)


# --- push / load / tag / rm ---------------------------------------------------------------------------------
def test_push_goes_from_the_node_that_has_the_image(fake: FakeManager) -> None:
    pushed = [
        {"status": "The push refers to repository [10.0.0.9:5000/team/app]"},
        {"status": "Pushed", "id": "aaa"},
        {"status": "v1: digest: sha256:123 size: 527"},
    ]
    fake.route("POST", engine(N2, "/images/10.0.0.9:5000/team/app/push"), json_lines(*pushed))
    code, out, _ = fake.run("image", "push", "10.0.0.9:5000/team/app:v1")
    assert (code, out) == (0, "node-2: v1: digest: sha256:123 size: 527\n")
    (req,) = fake.find("POST", engine(N2, "/images/10.0.0.9:5000/team/app/push"))
    assert req.raw_path == engine(N2, "/images/10.0.0.9:5000/team/app/push") and req.q("tag") == "v1"
    code, _, err = fake.run("image", "push", "10.0.0.9:5000/nothing:v1")
    assert code == 1 and err == "Error: no node has an image tagged 10.0.0.9:5000/nothing:v1\n"


def test_load_sends_the_archive_to_every_ready_node(fake: FakeManager, tmp_path: Path) -> None:
    archive = tmp_path / "images.tar"
    archive.write_bytes(b"tar" * 50000)
    for n in (N1, N2):
        fake.route(
            "POST", engine(n, "/images/load"), json_lines({"stream": "Loaded image: busybox:latest\n"})
        )
    code, out, err = fake.run("image", "load", "-i", str(archive))
    assert code == 0 and err == ""  # the result lines are the progress: said once, on stdout
    assert sorted(out.splitlines()) == [
        "node-1: Loaded image: busybox:latest",
        "node-2: Loaded image: busybox:latest",
    ]
    for n in (N1, N2):
        (req,) = fake.find("POST", engine(n, "/images/load"))
        assert req.body == archive.read_bytes() and req.headers["content-type"] == "application/x-tar"


def test_load_reads_stdin_when_no_file_is_given(fake: FakeManager) -> None:
    fake.route("POST", engine(N1, "/images/load"), json_lines({"stream": "Loaded image: x:1\n"}))
    code, out, _ = fake.run("image", "load", "--node", "node-1", input=b"archive bytes")
    assert (code, out) == (0, "node-1: Loaded image: x:1\n")
    (req,) = fake.find("POST", engine(N1, "/images/load"))
    assert req.body == b"archive bytes"


def test_load_errors_name_the_node(fake: FakeManager, tmp_path: Path) -> None:
    archive = tmp_path / "bad.tar"
    archive.write_bytes(b"not a tar")
    fake.route(
        "POST", engine(N1, "/images/load"), error(400, "the archive has no manifest.json or index.json")
    )
    code, _, err = fake.run("image", "load", "-i", str(archive), "--node", "node-1")
    assert code == 1 and err.endswith(
        "Error: load failed on node-1: the archive has no manifest.json or index.json\n"
    )


def test_tag_acts_on_the_nodes_that_have_the_source(fake: FakeManager) -> None:
    for n in (N1, N2):
        fake.route("POST", engine(n, "/images/busybox/tag"), Reply(201))
    assert fake.run("image", "tag", "busybox", "10.0.0.9:5000/mine:v2") == (0, "", "")
    for n in (N1, N2):
        (req,) = fake.find("POST", engine(n, "/images/busybox/tag"))
        assert (req.q("repo"), req.q("tag")) == ("10.0.0.9:5000/mine", "v2")
    code, _, err = fake.run("image", "tag", "nothing", "x")
    assert code == 1 and err == "Error: No such image: nothing\n"


def test_rm_removes_from_every_node_that_has_it_and_prints_what_went(fake: FakeManager) -> None:
    removed = [{"Untagged": "busybox:latest"}, {"Deleted": BUSYBOX}]
    fake.route("DELETE", engine(N1, "/images/busybox"), Reply(body=removed))
    fake.route(
        "DELETE", engine(N2, "/images/busybox"), error(409, "image is being used by running container 123")
    )
    code, out, err = fake.run("image", "rm", "-f", "busybox", "ghost")
    assert code == 1
    assert out.splitlines() == ["node-1: Untagged: busybox:latest", f"node-1: Deleted: {BUSYBOX}"]
    assert err == "Error: node-2: image is being used by running container 123; No such image: ghost\n"
    assert fake.find("DELETE", engine(N1, "/images/busybox"))[0].q("force") == "1"


def test_save_streams_the_archive_of_a_node_that_has_every_image(fake: FakeManager, tmp_path: Path) -> None:
    fake.route(
        "GET", engine(N2, "/images/get"), Reply(content_type="application/x-tar", chunks=[b"tar", b"ball"])
    )
    out = tmp_path / "saved.tar"
    assert fake.run("image", "save", "-o", str(out), "busybox", "10.0.0.9:5000/team/app:v1") == (0, "", "")
    assert out.read_bytes() == b"tarball"
    (req,) = fake.find("GET", engine(N2, "/images/get"))
    assert req.query["names"] == ["busybox", "10.0.0.9:5000/team/app:v1"]
    assert fake.run("image", "save", "--node", "node-2", "busybox")[1] == "tarball"  # stdout, not a terminal
    code, _, err = fake.run("image", "save", "-o", str(out), "busybox", "nothing")
    assert code == 1 and err == "Error: no node has every image of: busybox nothing\n"

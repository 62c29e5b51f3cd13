"""docker save / load, OCI archives, and ``import`` of a rootfs tarball with ``--change`` lines."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import tarfile
import threading
from pathlib import Path

import pytest

from agent.runtime.errors import ArchiveError, BlobCorrupted, InvalidChange
from agent.runtime.images.archive import import_rootfs, load_archive, save_archive
from agent.runtime.images.changes import apply_changes
from agent.runtime.images.oci import OCI_LAYER, OCI_LAYER_GZIP, Platform
from agent.runtime.images.store import ImageStore
from tests.unit.runtime.imagebuild import D, F, L, build_image, make_tar, sha256

ROOTFS = make_tar(
    [D("bin"), F("bin/tool", "#!/bin/sh\necho hi\n", mode=0o755), L("bin/sh", "tool"), D("etc")]
)


def members(archive: bytes) -> dict[str, bytes | None]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        out: dict[str, bytes | None] = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            out[m.name] = f.read() if f else None
        return out


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def test_apply_changes() -> None:
    config = apply_changes(
        {"Env": ["PATH=/bin", "A=old"]},
        [
            'CMD ["sh", "-c", "echo hi"]',
            "ENTRYPOINT exec /bin/run --flag",
            'ENV A=new B="two words"',
            "ENV LEGACY value with spaces",
            'LABEL com.example.tier=web "quoted key"=yes',
            "EXPOSE 80 53/udp",
            'VOLUME ["/data", "/logs"]',
            "WORKDIR /srv",
            "USER nobody:nogroup",
            "STOPSIGNAL SIGQUIT",
            "ONBUILD RUN make",
        ],
    )
    assert config == {
        "Cmd": ["sh", "-c", "echo hi"],
        "Entrypoint": ["/bin/sh", "-c", "exec /bin/run --flag"],
        "Env": ["PATH=/bin", "A=new", "B=two words", "LEGACY=value with spaces"],
        "Labels": {"com.example.tier": "web", "quoted key": "yes"},
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
        "Volumes": {"/data": {}, "/logs": {}},
        "WorkingDir": "/srv",
        "User": "nobody:nogroup",
        "StopSignal": "SIGQUIT",
        "OnBuild": ["RUN make"],
    }


@pytest.mark.parametrize("line", ["RUN make", "CMD", "EXPOSE 99999", "EXPOSE 80/xyz", "LABEL =x", 'ENV A="x'])
def test_bad_changes_are_refused(line: str) -> None:
    with pytest.raises(InvalidChange):
        apply_changes({}, [line])


@pytest.mark.parametrize("compression", ["", "gzip", "bzip2", "xz"])
def test_import_rootfs(store: ImageStore, tmp_path: Path, compression: str) -> None:
    data = {
        "": ROOTFS,
        "gzip": gzip.compress(ROOTFS),
        "bzip2": bz2.compress(ROOTFS),
        "xz": lzma.compress(ROOTFS),
    }
    source = tmp_path / "rootfs.tar"
    source.write_bytes(data[compression])
    image = import_rootfs(
        store, source, reference="imported:1", changes=['CMD ["/bin/sh"]', "ENV A=1"], message="from a test"
    )
    assert image.familiar_tags == ["imported:1"]
    assert image.diff_ids == (sha256(ROOTFS),)
    assert image.config.container == {"Cmd": ["/bin/sh"], "Env": ["A=1"]}
    assert image.config.history[0].comment == "from a test"
    assert image.config.platform == Platform.host()
    [layer] = image.manifest.layers
    assert layer.media_type == OCI_LAYER_GZIP
    assert gzip.decompress(store.blobs.read(layer.digest)) == ROOTFS


def test_import_is_reproducible_with_a_fixed_time(tmp_path: Path) -> None:
    ids = set()
    for name in ("a", "b"):
        store = ImageStore(tmp_path / name)
        ids.add(import_rootfs(store, io.BytesIO(ROOTFS), created="2024-01-01T00:00:00Z").id)
    assert len(ids) == 1


def test_import_uncompressed_layer_and_from_a_pipe(store: ImageStore) -> None:
    read_fd, write_fd = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_fd, ROOTFS), os.close(write_fd)))
    writer.start()
    with os.fdopen(read_fd, "rb") as pipe:
        image = import_rootfs(store, pipe, compress=False)
    writer.join()
    [layer] = image.manifest.layers
    assert (layer.media_type, layer.digest) == (OCI_LAYER, sha256(ROOTFS))
    assert image.dangling


def test_import_refuses_what_is_not_a_tar(store: ImageStore) -> None:
    with pytest.raises(ArchiveError):
        import_rootfs(store, io.BytesIO(b"this is not a tarball" * 100))
    with pytest.raises(ArchiveError):
        import_rootfs(store, io.BytesIO(gzip.compress(b"x" * 2000)))


@pytest.mark.parametrize("fmt", ["docker", "oci"])
@pytest.mark.parametrize("compress", [False, True])
def test_save_then_load_round_trip(tmp_path: Path, fmt: str, compress: bool) -> None:
    source = ImageStore(tmp_path / "src")
    base = make_tar([D("etc"), F("etc/hostname", "x\n")])
    app = make_tar([D("app"), F("app/main", "run\n")])
    one = build_image(source, [base, app], "registry.local/team/app:1", compress=compress)
    two = build_image(source, [base], "busybox:latest", compress=compress)
    archive = tmp_path / "images.tar"
    save_archive(source, ["registry.local/team/app:1", "busybox"], archive, fmt=fmt)
    target = ImageStore(tmp_path / "dst")
    lines = load_archive(target, archive)
    assert sorted(lines) == ["Loaded image: busybox:latest", "Loaded image: registry.local/team/app:1"]
    for image, name in ((one, "registry.local/team/app:1"), (two, "busybox")):
        loaded = target.get(name)
        assert loaded.id == image.id
        assert loaded.diff_ids == image.diff_ids
        if fmt == "oci":
            assert loaded.manifest_digest == image.manifest_digest  # blobs travel as they are
    files = members(archive.read_bytes())
    if fmt == "docker":
        manifest = json.loads(files["manifest.json"] or b"")
        assert {tuple(m["RepoTags"]) for m in manifest} == {
            ("registry.local/team/app:1",),
            ("busybox:latest",),
        }
        assert json.loads(files["repositories"] or b"")["busybox"]["latest"]
        layer_files = [n for n in files if n.endswith("/layer.tar")]
        assert len(layer_files) == 2, "the shared base layer is written once"
        assert all(files[n] in (base, app) for n in layer_files), "layers are plain tars in docker archives"
    else:
        assert "oci-layout" in files and "index.json" in files
        index = json.loads(files["index.json"] or b"")
        names = {m["annotations"]["io.containerd.image.name"] for m in index["manifests"]}
        assert names == {"registry.local/team/app:1", "docker.io/library/busybox:latest"}


def test_save_to_a_stream_and_load_from_a_pipe(tmp_path: Path) -> None:
    source = ImageStore(tmp_path / "src")
    image = build_image(source, [ROOTFS], "tool:1", compress=True)
    out = io.BytesIO()
    save_archive(source, ["tool:1"], out)
    read_fd, write_fd = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_fd, out.getvalue()), os.close(write_fd)))
    writer.start()
    with os.fdopen(read_fd, "rb") as pipe:
        lines = load_archive(ImageStore(tmp_path / "dst"), pipe)
    writer.join()
    assert lines == ["Loaded image: tool:1"]
    assert ImageStore(tmp_path / "dst").get("tool:1").id == image.id


def _docker_archive(layer: bytes, diff_id: str, *, gzip_layer: bool = False) -> bytes:
    """A docker-save archive as Docker 20.10 writes it (built by hand, not by our own writer)."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    config_name = sha256(config).partition(":")[2] + ".json"
    layer_id = "a" * 64
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, body in (
            (config_name, config),
            (f"{layer_id}/VERSION", b"1.0"),
            (f"{layer_id}/json", b"{}"),
            (f"{layer_id}/layer.tar", gzip.compress(layer) if gzip_layer else layer),
            (
                "manifest.json",
                json.dumps(
                    [
                        {
                            "Config": config_name,
                            "RepoTags": ["hand/made:1"],
                            "Layers": [f"{layer_id}/layer.tar"],
                        }
                    ]
                ).encode(),
            ),
            ("repositories", json.dumps({"hand/made": {"1": layer_id}}).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


@pytest.mark.parametrize("gzip_layer", [False, True])
def test_load_a_handmade_docker_archive(store: ImageStore, gzip_layer: bool) -> None:
    lines = load_archive(store, io.BytesIO(_docker_archive(ROOTFS, sha256(ROOTFS), gzip_layer=gzip_layer)))
    assert lines == ["Loaded image: hand/made:1"]
    image = store.get("hand/made:1")
    assert image.diff_ids == (sha256(ROOTFS),)
    assert image.manifest.layers[0].media_type == (OCI_LAYER_GZIP if gzip_layer else OCI_LAYER)


def test_load_detects_a_layer_that_does_not_match_the_config(store: ImageStore) -> None:
    tampered = ROOTFS.replace(b"echo hi", b"echo HI")
    with pytest.raises(BlobCorrupted):
        load_archive(store, io.BytesIO(_docker_archive(tampered, sha256(ROOTFS))))
    assert store.images() == []
    assert not store.blobs.exists(sha256(tampered))


def test_load_detects_a_corrupted_oci_blob(tmp_path: Path) -> None:
    source = ImageStore(tmp_path / "src")
    image = build_image(source, [ROOTFS], "tool:1")
    out = io.BytesIO()
    save_archive(source, ["tool:1"], out, fmt="oci")
    damaged = out.getvalue().replace(b"echo hi", b"echo HI")
    target = ImageStore(tmp_path / "dst")
    with pytest.raises(BlobCorrupted) as info:
        load_archive(target, io.BytesIO(damaged))
    assert info.value.expected == image.manifest.layers[0].digest
    assert target.images() == []


def test_save_refuses_a_corrupted_local_blob(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "src")
    image = build_image(store, [ROOTFS], "tool:1")
    path = store.blobs.path(image.manifest.layers[0].digest)
    path.write_bytes(path.read_bytes().replace(b"echo hi", b"echo HI"))
    with pytest.raises(BlobCorrupted):
        save_archive(store, ["tool:1"], io.BytesIO(), fmt="oci")


def test_load_refuses_unknown_archives(store: ImageStore) -> None:
    with pytest.raises(ArchiveError):
        load_archive(store, io.BytesIO(make_tar([F("hello.txt", "hi")])))
    with pytest.raises(ArchiveError):
        load_archive(store, io.BytesIO(b"garbage" * 300))

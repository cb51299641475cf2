"""The output of a conversion: --overwrite never deletes what is not the artifact's, committed files get the
user's umask, and a disk that fails (full, read-only, no permission) is named as the cause, in one line,
with nothing left behind."""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.converters.writer import ArtifactWriter, check_destination
from edgegen.errors import ArtifactError, ConversionError
from edgegen.manifest import Source, read_manifest
from tests_support import tiny_graph, write_tiny_artifact

SOURCE = Source(model_class="tests.Tiny", converter="tests")


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if ".edgegen-tmp-" in p.name)


def contents(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_new(dest, **kw):
    with ArtifactWriter(dest, **kw) as writer:
        writer.add_graph("decoder", tiny_graph(), precision="fp16")
        writer.write(writer.manifest(family="vae", source=SOURCE))
        return writer.commit()


def test_overwrite_refuses_a_folder_whose_manifest_is_not_edgegens(tmp_path):
    """Only a file named edgegen.json is not enough: the folder's files (the user's) are kept."""
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "edgegen.json").write_text('{"title": "my notes"}')
    (folder / "chapter1.tex").write_text("precious")
    before = contents(folder)
    with pytest.raises(ArtifactError, match="is not an edgegen artifact; refusing to replace it.*is not a manifest"):
        write_new(folder, overwrite=True)
    assert contents(folder) == before and leftovers(tmp_path) == []


def test_overwrite_refuses_files_the_artifact_does_not_list_and_names_them(tmp_path):
    dest = write_tiny_artifact(tmp_path / "a")
    (dest / "results.csv").write_text("mine")
    (dest / "runs").mkdir()
    (dest / "runs" / "1.log").write_text("mine too")
    (dest / "empty").mkdir()
    before = contents(dest)
    with pytest.raises(ArtifactError, match=r"holds files its edgegen.json does not list \(empty/, results.csv, "
                                            r"runs/1.log\); --overwrite would delete them"):
        write_new(dest, overwrite=True)
    assert contents(dest) == before and read_manifest(dest).family == "gan" and leftovers(tmp_path) == []
    for extra in ("results.csv", "runs/1.log"):
        (dest / extra).unlink()
    (dest / "runs").rmdir()
    (dest / "empty").rmdir()
    assert read_manifest(write_new(dest, overwrite=True)).family == "vae"   # only its own files: replaced


def test_a_file_added_during_the_conversion_is_not_deleted_by_the_commit(tmp_path):
    dest = write_tiny_artifact(tmp_path / "a")
    with pytest.raises(ArtifactError, match=r"does not list \(late.txt\)"):
        with ArtifactWriter(dest, overwrite=True) as writer:
            writer.add_graph("decoder", tiny_graph(), precision="fp16")
            writer.write(writer.manifest(family="vae", source=SOURCE))
            (dest / "late.txt").write_text("written while the conversion ran")
            writer.commit()
    assert (dest / "late.txt").read_text() == "written while the conversion ran"
    assert read_manifest(dest).family == "gan" and leftovers(tmp_path) == []


def external_graph(path):
    """A graph saved by onnx with its weights in ``<file>.data``: onnx's C++ writer creates that file 0600."""
    w = numpy_helper.from_array(np.arange(64, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "ext",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=0)


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_every_committed_file_gets_the_users_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        with ArtifactWriter(tmp_path / "a") as writer:
            external_graph(writer.path("decoder.onnx"))
            writer.add_graph_file("decoder", "decoder.onnx", precision="int8-weight")
            writer.add_asset("notes", "notes.txt", "hi\n")
            writer.write(writer.manifest(family="vae", source=SOURCE))
            dest = writer.commit()
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in dest.iterdir()}
    assert set(modes) == {"decoder.onnx", "decoder.onnx.data", "notes.txt", "edgegen.json"}
    assert modes == dict.fromkeys(modes, file_mode), {k: oct(v) for k, v in modes.items()}
    assert stat.S_IMODE(dest.stat().st_mode) == dir_mode


@pytest.mark.parametrize(("number", "words"), [
    (errno.ENOSPC, "no space left on device writing {dest}: free space or choose another -o"),
    (errno.EROFS, "read-only file system writing {dest}: choose another -o on a writable disk"),
    (errno.EACCES, "permission denied writing {dest}: choose another -o you may write to, or fix the folder's "
                     "permissions"),
])
@pytest.mark.parametrize("wrapped", ["chained", "text only"])
def test_a_failing_disk_is_named_not_the_model(tmp_path, number, words, wrapped):
    """Converters wrap export failures into "the export failed: ..." (with the cause chained, or only its text
    kept); the writer reports the disk, whichever step wrote, and leaves nothing behind."""
    dest = tmp_path / "a"

    def export(path):   # stands in for torch.onnx.export / Optimum writing into the stage
        path.write_bytes(b"half a graph")
        raise OSError(number, os.strerror(number), str(path))

    # "Permission denied" in a message alone may be about a file the conversion read: that error stays
    expected = ConversionError if wrapped == "text only" and number == errno.EACCES else ArtifactError
    with pytest.raises(expected) as caught:
        with ArtifactWriter(dest) as writer:
            try:
                export(writer.path("decoder.onnx"))
            except OSError as exc:
                if wrapped == "chained":
                    raise ConversionError(f"graph 'decoder': torch.onnx.export failed: {exc}") from exc
                message = f"graph 'decoder': torch.onnx.export failed: {exc}"
            raise ConversionError(message)   # outside the except: no cause, no context, only the text
    if expected is ArtifactError:
        assert str(caught.value) == words.format(dest=dest)
    assert not dest.exists() and leftovers(tmp_path) == []


def test_a_full_temporary_folder_is_named_and_an_unreadable_source_left_to_its_own_message(tmp_path):
    import tempfile

    scratch = os.path.join(tempfile.gettempdir(), "quantize-xyz", "model.onnx")
    with pytest.raises(ArtifactError, match=f"^no space left on device writing {scratch}: free space or choose "
                                            "another TMPDIR$"):
        with ArtifactWriter(tmp_path / "a"):
            raise ConversionError("int8 quantization failed") from OSError(errno.ENOSPC, "No space left", scratch)
    unreadable = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "model" / "weights.safetensors"))
    with pytest.raises(ConversionError, match="cannot load the model") as caught:
        with ArtifactWriter(tmp_path / "b"):
            raise ConversionError("transformers cannot load the model") from unreadable
    assert caught.value.__cause__ is unreadable and leftovers(tmp_path) == []


def test_an_unwritable_output_is_refused_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match=r"cannot write .*file/out: .*file is a file, not a folder"):
        check_destination(tmp_path / "file" / "out", overwrite=False)
    with pytest.raises(ArtifactError, match=r"is a file, not an artifact folder; refusing to replace it"):
        check_destination(tmp_path / "file", overwrite=True)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False)   # root passes chmod 555: pretend instead
    with pytest.raises(ArtifactError, match=r"(permission denied|read-only file system) writing .*/new/out: "
                                            r"choose another -o"):
        ArtifactWriter(tmp_path / "new" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_failed_rename_at_commit_keeps_the_previous_artifact(tmp_path, monkeypatch):
    dest = write_tiny_artifact(tmp_path / "a")
    before = contents(dest)
    real = os.replace

    def replace(src, dst):
        if os.fspath(dst) == os.fspath(dest) and "-old" not in os.fspath(src):   # the new artifact's rename
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(ArtifactError, match="read-only file system writing"):
        write_new(dest, overwrite=True)
    monkeypatch.undo()
    assert contents(dest) == before and leftovers(tmp_path) == []

"""The bench's `serve run` leaves its temporary folder behind only when a variant failed."""

from serve_app.devtools.bench import ServeProcess


def test_a_variant_that_ran_leaves_no_folder_behind():
    proc = ServeProcess({"applications": []})
    assert proc.config_path.exists()
    proc.__exit__(None, None, None)
    assert not proc.dir.exists()


def test_a_failed_variant_keeps_its_logs(capsys):
    proc = ServeProcess({"applications": []})
    try:
        proc.__exit__(RuntimeError, RuntimeError("start failed"), None)
        assert proc.config_path.exists()
        assert str(proc.dir) in capsys.readouterr().err
    finally:
        import shutil

        shutil.rmtree(proc.dir, ignore_errors=True)

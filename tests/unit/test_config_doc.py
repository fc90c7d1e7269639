from pathlib import Path

from serve_app.devtools.config_doc import render

ROOT = Path(__file__).resolve().parents[2]


def test_config_doc_is_generated_from_the_models():
    text = render()
    assert "| `max_batch_size` | int | `16` |" in text and "`auto` / `cpu` / `cuda`" in text
    # docs/CONFIG.md is the committed output of `make config-doc`: regenerate it when config.py
    # changes.
    assert (ROOT / "docs" / "CONFIG.md").read_text() == text

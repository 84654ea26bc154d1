"""The interactive web app (`python -m sam2pp_jax.app --checkpoint DIR [--video PATH]`).

`session.py` holds the UI-free core (`Session`, `AppError`): video, model, prompts, propagation,
on-disk persistence; `render.py` draws the overlays; `export.py` writes the results zip. The
Gradio front end (`ui.py`, `__main__.py`) only calls `Session`. Nothing heavy is imported here.
"""

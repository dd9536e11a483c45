"""`sumie batch`: a file of jobs rendered to a folder with a manifest, resumable, here or on Ray.

`jobs` reads the file into tasks (one image each), `output` writes the images and the manifest (a folder or
an fsspec URI), `render` makes one task's image, `run` skips what is done and runs the rest, `on_ray` maps the
tasks over a Ray Data actor pool. See docs/batch.md and docs/scale-out.md.
"""

"""Weights in and out, in four modules read in this order:

- `files`: reading one file (safetensors memory-mapped; pickles only when asked, tensors only);
- `original`: the original single-file layout's key tables and architecture detection;
- `load`: strict loading onto the meta device, diffusers folders, single files, the hub cache;
- `convert`: writing a single file or a diffusers folder;

and `hashes`, A1111's model hash.
"""

from .convert import convert, to_single_file_state, write_folder
from .files import find_weight_files, read_checkpoint, read_safetensors, read_weight_files
from .hashes import model_hash
from .load import (Components, build, load_component, load_component_dir, load_folder, load_into, load_model,
                   load_single_file, load_tiny_vae, load_vae, resolve_folder)
from .original import SINGLE_FILE_PREFIX, ours_to_open_clip, to_original

__all__ = ["Components", "SINGLE_FILE_PREFIX", "build", "convert", "find_weight_files", "load_component",
           "load_component_dir", "load_folder", "load_into", "load_model", "load_single_file", "load_tiny_vae", "load_vae", "model_hash",
           "ours_to_open_clip", "read_checkpoint", "read_safetensors", "read_weight_files", "resolve_folder",
           "to_original", "to_single_file_state", "write_folder"]

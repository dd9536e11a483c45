"""Speed and memory: passes applied to a built model, and the pipeline's memory options. Models stay plain
`torch.nn`; nothing here changes what they compute beyond float rounding (each option is tested against
the plain path's images).

- `kernels`: `by_shape(model)`, each 3x3 convolution and Linear by the exact algorithm fastest for its shape
  (the pipeline's default on CPU);
- `winograd`: Winograd's minimal filtering for 3x3 convolutions, used by `kernels` and `packing`;
- `packing`: `pack(model)`, weights kept in oneDNN's layout (`pipe.compile()` on a CPU);
- `texts`: `remember(unet)`, cross-attention's keys and values computed once per text (the pipeline's default);
- `pages`: the memory-mapped originals' pages given back once a packed copy replaces them;
- `bands`: the VAE layer by layer in bands of rows, with whole-image GroupNorm statistics;
- `memory`: offloading to a device, attention slicing, and which VAE decode a size takes;
- `compile`: `pipe.compile()`'s backends;
- `allocator`: glibc's malloc set to keep freed memory.
"""

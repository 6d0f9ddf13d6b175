"""flintlm's own CPU kernels (C, built at run time) and their torch-facing wrappers."""

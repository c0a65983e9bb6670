"""From files to model-ready pixels, in the order an ingest runs them.

scan finds the files under a folder; decode recognises an image by its content and turns one file into pixels on
the CPU, opening it through safe_open (a regular file only, never waiting on a FIFO or device); cpu_reader does
that in worker processes, batch by batch (the CPU path). On a GPU, thread_reader reads files with threads, hands
the JPEGs that jpeg_header finds suitable to a device decoder (device_decoders) in large batches, and gpu_decode
turns and resizes them there, while the CPU threads decode the rest. batches drives a reader and the model
(embed_files).

These modules import each other at the top; torch, torchvision and tqdm are imported inside the functions that use
them, because every command imports the pipeline and one that never decodes (listing datasets, a query refused
before the model loads) should not wait for them: importing torch and torchvision takes 3.1 s on 2 cores.
"""

import warnings as _warnings

# Pillow's warnings (bomb-sized images, EXIF quirks) are not errors here. They are filtered once, by origin, for
# every module of the pipeline, rather than with warnings.catch_warnings() around each decode: that swaps the
# process's filter list and is not thread-safe, and thread_reader.py decodes and reads EXIF in threads.
_warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
_warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")  # DecompressionBombWarning

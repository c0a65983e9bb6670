"""From files to model-ready pixels, in the order an ingest runs them.

scan finds the files under a folder; decode recognises an image by its content and turns one file into pixels on
the CPU, opening it through safe_open (a regular file only, never waiting on a FIFO or device); cpu_reader does
that in worker processes, batch by batch; encoded_jpeg reads JPEGs undecoded for gpu_decode, which decodes them
where the model runs; batches drives the reader and the model (embed_files).

These modules import each other at the top; torch, torchvision and tqdm are imported inside the functions that use
them, because every command imports the pipeline and one that never decodes (listing datasets, a query refused
before the model loads) should not wait for them: importing torch and torchvision takes 3.1 s on 2 cores.
"""

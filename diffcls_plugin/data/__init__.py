"""Data the classifier reads and the project builds: stratified subsets, image decoding, the
embedded digits, webdataset reading and writing, and the CLIP tokenizer files of the tiny models."""

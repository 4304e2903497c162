"""Imported once by the parse workers' fork server (Linux): every parse worker then starts as a fork of a process that
already holds Docling, the tokenizer library and our stage code, instead of importing them itself (a spawned worker
spent ~4.5 s of CPU on imports, and workers are replaced every ``recycle_after`` documents and after a crash)."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import docling.datamodel.pipeline_options  # noqa: E402, F401
import docling.document_converter  # noqa: E402, F401
from docling_core.transforms.chunker.tokenizer.huggingface import HuggingFaceTokenizer  # noqa: E402, F401
from transformers import AutoTokenizer  # noqa: E402, F401

import docingest.core.chunk  # noqa: E402, F401
import docingest.core.parse  # noqa: E402, F401

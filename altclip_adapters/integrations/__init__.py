"""Embedding backends for LangChain (``integrations.langchain``) and LlamaIndex (``integrations.llama_index``).

Import them from their submodules; each needs its extra (``pip install 'altclip-adapters[langchain]'`` or
``'altclip-adapters[llama-index]'``). This package itself imports neither framework.
"""

"""Text generation behind one interface: vLLM offline, an OpenAI-compatible server, or transformers.

Heavy engines (vllm, torch, transformers) are imported only when a backend is made.
"""

from clinsynth.llm.backends import Backend, GenRequest, GenResult, make_backend
from clinsynth.llm.tiny import ensure_tiny_model

__all__ = ["Backend", "GenRequest", "GenResult", "ensure_tiny_model", "make_backend"]

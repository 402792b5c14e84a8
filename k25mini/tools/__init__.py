"""Tools for the agent loop (chapter 06): a sandboxed IPython code tool (docs/sandbox.md).

``CodeTool`` runs model-written Python in a fresh, isolated kernel per episode; ``sandbox_capabilities()``
says which isolation works on this machine; ``KernelPool`` keeps kernels pre-started.
"""

from k25mini.tools.sandbox import (
    CodeTool,
    KernelPool,
    Observation,
    SandboxCapabilities,
    SandboxError,
    SandboxLimits,
    SandboxUnavailable,
    sandbox_capabilities,
)

__all__ = [
    "CodeTool",
    "KernelPool",
    "Observation",
    "SandboxCapabilities",
    "SandboxError",
    "SandboxLimits",
    "SandboxUnavailable",
    "sandbox_capabilities",
]

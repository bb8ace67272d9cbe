"""The token strings of the ``exgra_med`` model (LLaVA-Med v1 lineage, docs/method.md §1.6).

A leaf of their own: the conversation builder (``data``) and the model (``modeling``) both need them,
and neither should import the other for four strings.
"""

IMAGE_PATCH_TOKEN = "<im_patch>"
IMAGE_START_TOKEN = "<im_start>"
IMAGE_END_TOKEN = "<im_end>"
PAD_TOKEN = "[PAD]"
# The order in which the original LLaVA-7b-v0 lineage added its tokens (ids 32000..32003).
ADDED_TOKENS = (PAD_TOKEN, IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN, IMAGE_END_TOKEN)

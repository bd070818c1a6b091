"""Building blocks that several transfer methods share: gradient reversal, domain discriminators, kernels.

Each exists once here; methods (``crosstask.methods``) compose them.
"""

"""How good is a model (lessons 09-13): FID on minidiff's own MNIST classifier, bits/dim, the
autoencoder's reconstructions, inpainting accuracy, prompted accuracy and attribute adherence,
and the article's claim.  The command is ``minidiff eval`` (``minidiff.commands.eval``)."""

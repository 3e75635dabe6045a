"""The char-RNN (`network`, with cells written from their equations in `cells`), its
LightningModule (`lightning_module`: loss, scores, carried state, optimisation), and checkpoints
read back as models (`checkpoints`)."""

"""Self-supervised backbone pretraining on unlabelled images (``seg-transfer pretrain``): the views
(``views``), the methods and their losses (``methods``), the k-NN monitor (``monitor``) and the run (``run``)."""

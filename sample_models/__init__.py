"""lipcheck's sample models. A package only so that ``--arch sample_models.torch_models:<factory>`` and the
pickled ``torch/mlp.pickled.pt`` (class ``sample_models.torch_models.MLP``) can import the architectures;
the ONNX files and sample_models/generate.py do not need it."""

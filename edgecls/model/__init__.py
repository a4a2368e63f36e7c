"""The model: one .tflite file, its labels and metadata, preprocessing and scores."""

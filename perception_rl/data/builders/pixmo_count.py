class Builder:
    BUILDER_CONFIGS = []

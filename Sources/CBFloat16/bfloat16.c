// Header-only: see include/goml_bfloat16.h.

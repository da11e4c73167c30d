"""Test harness: real nginx / Apache httpd servers started on 127.0.0.1 with generated
configs, plus raw-socket HTTP helpers for the cases where framing matters."""

"""Generated from proto/turnout/v1 by scripts/gen-proto.sh; do not edit."""

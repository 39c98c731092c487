"""`bureau machine doctor` and `bureau matrix doctor`: checks that say what is wrong and
what mends it, and fixes applied in order and checked again."""

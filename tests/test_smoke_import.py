def test_pack_imports_without_comfy():
    import diffeditor
    assert isinstance(diffeditor.NODE_CLASS_MAPPINGS, dict)

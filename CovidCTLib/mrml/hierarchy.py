"""Subject hierarchy: results are filed beside their input (under its patient/study when it has one)."""

from __future__ import annotations

import slicer


def subject_hierarchy(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLSubjectHierarchyNode:
    """The scene's subject hierarchy node (created by MRML when missing)."""
    node = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if node is None:
        raise RuntimeError("the scene has no subject hierarchy; is the Subject Hierarchy module loaded?")
    return node


def parent_item_of(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode) -> int:
    """The subject hierarchy parent (study, folder or scene) of a data node."""
    sh = subject_hierarchy(scene)
    item = sh.GetItemByDataNode(node)
    if not item:
        return sh.GetSceneItemID()
    return sh.GetItemParent(item) or sh.GetSceneItemID()


def file_beside(scene: slicer.vtkMRMLScene, reference: slicer.vtkMRMLNode, nodes: list[slicer.vtkMRMLNode]) -> int:
    """Put ``nodes`` under the reference node's parent item (its study for DICOM data); returns that item."""
    sh = subject_hierarchy(scene)
    parent = parent_item_of(scene, reference)
    for node in nodes:
        item = sh.GetItemByDataNode(node)
        if not item:
            item = sh.CreateItem(parent, node)
        else:
            sh.SetItemParent(item, parent)
    return parent

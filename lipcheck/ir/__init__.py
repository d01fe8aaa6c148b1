from lipcheck.ir.graph import Graph, Node, TensorInfo

__all__ = ["Graph", "Node", "TensorInfo"]

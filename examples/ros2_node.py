"""A ROS 2 node that publishes edgecls results as JSON on `classification` (std_msgs/String).

    ros2 run --prefix 'python3' ... or simply: python3 examples/ros2_node.py --ros-args -p model:=model.tflite \
        -p source:=picam -p hold:=3

Needs a sourced ROS 2 installation (rclpy, std_msgs) and edgecls in the same Python. The stream classifies in its
own threads; a ROS timer polls `stream.latest()` so publishing stays on the executor's thread.
"""

from __future__ import annotations

import json

import rclpy
from rclpy.node import Node
from std_msgs.msg import String

import edgecls


class ClassifierNode(Node):
    def __init__(self) -> None:
        super().__init__("edgecls_classifier")
        model = self.declare_parameter("model", "model.tflite").value
        source = self.declare_parameter("source", "picam").value
        hold = self.declare_parameter("hold", 3).value
        rate = self.declare_parameter("publish_rate", 30.0).value
        self.only_changes = self.declare_parameter("only_changes", False).value
        self.publisher = self.create_publisher(String, "classification", 10)
        self.stream = edgecls.Stream(
            model,
            source,
            classifier=edgecls.ClassifierConfig(top_k=3),
            smoothing=edgecls.Smoothing(hold=int(hold)),
            keep_frames=False,
        )
        self.stream.start()
        self.last_sequence = -1
        self.timer = self.create_timer(1.0 / float(rate), self.publish_latest)
        self.get_logger().info(f"classifying {source} with {model}")

    def publish_latest(self) -> None:
        try:
            result = self.stream.latest()
        except edgecls.EdgeclsError as exc:
            self.get_logger().error(str(exc))
            self.timer.cancel()
            return
        if result is None or result.sequence == self.last_sequence:
            return
        self.last_sequence = result.sequence
        if self.only_changes and not result.decision.changed:
            return
        self.publisher.publish(String(data=json.dumps(result.to_dict())))

    def destroy_node(self) -> None:
        self.stream.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = ClassifierNode()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()

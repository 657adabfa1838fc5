#!/usr/bin/env python3
"""The CIFAR ResNet of He et al. (2016, section 4.2) as gotrain builds it
(graph/resnet.go, --model resnet --depth N), with torchvision's names and
initialisation, so that gotrain's weights load with strict=True:

  conv1 (3x3, 16 channels, stride 1, pad 1, no bias), bn1, relu;
  layer1..layer3: n = (depth-2)/6 BasicBlocks of 16, 32 and 64 channels, the
  first block of layer2 and layer3 with stride 2 and a shortcut
  downsample = Sequential(conv1x1 stride 2 without bias, BatchNorm2d);
  adaptive average pooling to 1x1, flatten, fc (Linear 64 -> classes).

Convolutions: kaiming_normal_(mode="fan_out", nonlinearity="relu"); BatchNorm
weight 1, bias 0, eps 1e-5, momentum 0.1; fc: PyTorch's default.

The other peer scripts import it from this folder:

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from resnet import ResNet

Run it to print the parameter count of ResNet-20 on 1x28x28 inputs (0.27M).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x if self.downsample is None else self.downsample(x)
        return self.relu(out + short)


class ResNet(nn.Module):
    """ResNet(depth, in_channels, classes): 6n+2 layers, depth 20, 32, 44, 56, 110, ..."""

    def __init__(self, depth=20, in_channels=1, classes=10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"resnet depth {depth} must be 6n+2 with n >= 1 (20, 32, 44, 56, 110)")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        cin = 16
        for stage, width in enumerate([16, 32, 64]):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, width, stride))
                cin = width
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def num_params(m):
    return sum(p.numel() for p in m.parameters())


if __name__ == "__main__":
    m = ResNet(20, 1, 10)
    n = num_params(m)
    buffers = sum(b.numel() for b in m.buffers())
    out = m(torch.zeros(2, 1, 28, 28))
    print(f"ResNet-20 (1 input channel, 10 classes): {n} parameters ({n / 1e6:.2f}M), "
          f"{buffers} buffer values, {len(m.state_dict())} state_dict entries; output {tuple(out.shape)}")
    for depth in (32, 56):
        print(f"ResNet-{depth}: {num_params(ResNet(depth, 3, 10)) / 1e6:.2f}M parameters (3 input channels)")

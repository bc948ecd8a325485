# coding=utf-8
# labkit: staff-only -- an original-kit-style submission (test fixture); never shipped.
import numpy as np
import struct
import os
import time


class ConvolutionalLayer(object):
    def __init__(self, kernel_size, channel_in, channel_out, padding, stride, type=0):
        self.kernel_size = kernel_size
        self.channel_in = channel_in
        self.channel_out = channel_out
        self.padding = padding
        self.stride = stride
        self.forward = self.forward_raw
        self.backward = self.backward_raw
        if type == 1:  # type 设为 1 时，使用优化后的 foward 和 backward 函数
            self.forward = self.forward_speedup
            self.backward = self.backward_speedup
        print('\tConvolutional layer with kernel size %d, input channel %d, output channel %d.' % (self.kernel_size, self.channel_in, self.channel_out))

    def init_param(self, std=0.01):
        self.weight = np.random.normal(loc=0.0, scale=std, size=(self.channel_in, self.kernel_size, self.kernel_size, self.channel_out))
        self.bias = np.zeros([self.channel_out])

    def forward_raw(self, input):
        start_time = time.time()
        self.input = input  # [N, C, H, W]
        height = self.input.shape[2] + self.padding * 2
        width = self.input.shape[3] + self.padding * 2
        self.input_pad = np.zeros([self.input.shape[0], self.input.shape[1], height, width])
        self.input_pad[:, :, self.padding:self.padding + self.input.shape[2], self.padding:self.padding + self.input.shape[3]] = self.input
        height_out = (height - self.kernel_size) / self.stride + 1
        width_out = (width - self.kernel_size) / self.stride + 1
        self.output = np.zeros([self.input.shape[0], self.channel_out, height_out, width_out])
        for idxn in range(self.input.shape[0]):
            for idxc in range(self.channel_out):
                for idxh in range(height_out):
                    for idxw in range(width_out):
                        # 计算卷积层的前向传播，特征图与卷积核的内积再加偏置
                        hs = idxh * self.stride
                        ws = idxw * self.stride
                        self.output[idxn, idxc, idxh, idxw] = np.sum(self.weight[:, :, :, idxc] * self.input_pad[idxn, :, hs:hs + self.kernel_size, ws:ws + self.kernel_size]) + self.bias[idxc]
        self.forward_time = time.time() - start_time
        return self.output

    def forward_speedup(self, input):
        # 使用 img2col 加速卷积层的前向传播
        start_time = time.time()
        self.input = input  # [N, C, H, W]
        N, C, H, W = self.input.shape
        K, S, P = self.kernel_size, self.stride, self.padding
        height = H + P * 2
        width = W + P * 2
        self.input_pad = np.zeros([N, C, height, width])
        self.input_pad[:, :, P:P + H, P:P + W] = self.input
        self.height_out = (height - K) // S + 1
        self.width_out = (width - K) // S + 1
        # img2col: 每个输出位置的感受野展开成一行, 行按 (n, h, w) 排列, 列按 (c, kh, kw) 排列
        self.col = np.zeros([N, self.height_out, self.width_out, C * K * K])
        for idxh in range(self.height_out):
            for idxw in range(self.width_out):
                patch = self.input_pad[:, :, idxh * S:idxh * S + K, idxw * S:idxw * S + K]
                self.col[:, idxh, idxw, :] = patch.reshape(N, -1)
        self.col = self.col.reshape(-1, C * K * K)
        weight_col = self.weight.reshape(-1, self.channel_out)
        output = np.dot(self.col, weight_col) + self.bias
        self.output = output.reshape(N, self.height_out, self.width_out, self.channel_out).transpose(0, 3, 1, 2)
        self.forward_time = time.time() - start_time
        return self.output

    def backward_speedup(self, top_diff):
        # 使用 img2col 加速卷积层的反向传播
        start_time = time.time()
        N, C, H, W = self.input.shape
        K, S, P = self.kernel_size, self.stride, self.padding
        top_diff_col = np.transpose(top_diff, [0, 2, 3, 1]).reshape(-1, self.channel_out)
        self.d_weight = np.dot(self.col.T, top_diff_col).reshape(self.weight.shape)
        self.d_bias = np.sum(top_diff_col, axis=0)
        bottom_col = np.dot(top_diff_col, self.weight.reshape(-1, self.channel_out).T)
        bottom_col = bottom_col.reshape(N, self.height_out, self.width_out, C, K, K)
        bottom_diff = np.zeros(self.input_pad.shape)
        for idxh in range(self.height_out):
            for idxw in range(self.width_out):
                bottom_diff[:, :, idxh * S:idxh * S + K, idxw * S:idxw * S + K] += bottom_col[:, idxh, idxw]
        bottom_diff = bottom_diff[:, :, P:P + H, P:P + W]
        self.backward_time = time.time() - start_time
        return bottom_diff

    def backward_raw(self, top_diff):
        start_time = time.time()
        self.d_weight = np.zeros(self.weight.shape)
        self.d_bias = np.zeros(self.bias.shape)
        bottom_diff = np.zeros(self.input_pad.shape)
        for idxn in range(top_diff.shape[0]):
            for idxc in range(top_diff.shape[1]):
                for idxh in range(top_diff.shape[2]):
                    for idxw in range(top_diff.shape[3]):
                        # 计算卷积层的反向传播， 权重、偏置的梯度和本层损失
                        hs = idxh * self.stride
                        ws = idxw * self.stride
                        self.d_weight[:, :, :, idxc] += top_diff[idxn, idxc, idxh, idxw] * self.input_pad[idxn, :, hs:hs + self.kernel_size, ws:ws + self.kernel_size]
                        self.d_bias[idxc] += top_diff[idxn, idxc, idxh, idxw]
                        bottom_diff[idxn, :, hs:hs + self.kernel_size, ws:ws + self.kernel_size] += top_diff[idxn, idxc, idxh, idxw] * self.weight[:, :, :, idxc]
        bottom_diff = bottom_diff[:, :, self.padding:self.padding + self.input.shape[2], self.padding:self.padding + self.input.shape[3]]
        self.backward_time = time.time() - start_time
        return bottom_diff

    def get_gradient(self):
        return self.d_weight, self.d_bias

    def update_param(self, lr):
        self.weight += - lr * self.d_weight
        self.bias += - lr * self.d_bias

    def load_param(self, weight, bias):
        assert self.weight.shape == weight.shape
        assert self.bias.shape == bias.shape
        self.weight = weight
        self.bias = bias

    def get_forward_time(self):
        return self.forward_time

    def get_backward_time(self):
        return self.backward_time


class MaxPoolingLayer(object):
    def __init__(self, kernel_size, stride, type=0):
        self.kernel_size = kernel_size
        self.stride = stride
        self.forward = self.forward_raw
        self.backward = self.backward_raw_book
        if type == 1:  # type 设为 1 时，使用优化后的 foward 和 backward 函数
            self.forward = self.forward_speedup
            self.backward = self.backward_speedup
        print('\tMax pooling layer with kernel size %d, stride %d.' % (self.kernel_size, self.stride))

    def forward_raw(self, input):
        start_time = time.time()
        self.input = input  # [N, C, H, W]
        self.max_index = np.zeros(self.input.shape)
        height_out = (self.input.shape[2] - self.kernel_size) / self.stride + 1
        width_out = (self.input.shape[3] - self.kernel_size) / self.stride + 1
        self.output = np.zeros([self.input.shape[0], self.input.shape[1], height_out, width_out])
        for idxn in range(self.input.shape[0]):
            for idxc in range(self.input.shape[1]):
                for idxh in range(height_out):
                    for idxw in range(width_out):
                        # 计算最大池化层的前向传播， 取池化窗口内的最大值
                        hs = idxh * self.stride
                        ws = idxw * self.stride
                        self.output[idxn, idxc, idxh, idxw] = np.max(self.input[idxn, idxc, hs:hs + self.kernel_size, ws:ws + self.kernel_size])
                        curren_max_index = np.argmax(self.input[idxn, idxc, hs:hs + self.kernel_size, ws:ws + self.kernel_size])
                        curren_max_index = np.unravel_index(curren_max_index, [self.kernel_size, self.kernel_size])
                        self.max_index[idxn, idxc, hs + curren_max_index[0], ws + curren_max_index[1]] = 1
        return self.output

    def forward_speedup(self, input):
        # 改进forward函数，使得计算加速 (只循环 K*K 个窗口内偏移)
        start_time = time.time()
        self.input = input  # [N, C, H, W]
        N, C, H, W = self.input.shape
        K, S = self.kernel_size, self.stride
        height_out = (H - K) // S + 1
        width_out = (W - K) // S + 1
        self.output = np.full([N, C, height_out, width_out], -np.inf)
        for kh in range(K):
            for kw in range(K):
                view = self.input[:, :, kh:kh + S * (height_out - 1) + 1:S, kw:kw + S * (width_out - 1) + 1:S]
                self.output = np.maximum(self.output, view)
        self.forward_time = time.time() - start_time
        return self.output

    def backward_speedup(self, top_diff):
        # 改进backward函数，使得计算加速; 一个窗口只把梯度给第一个最大值, 重叠窗口的梯度相加
        N, C, H, W = self.input.shape
        K, S = self.kernel_size, self.stride
        height_out, width_out = self.output.shape[2], self.output.shape[3]
        bottom_diff = np.zeros(self.input.shape)
        taken = np.zeros(self.output.shape, dtype=np.bool)
        for kh in range(K):
            for kw in range(K):
                rows = slice(kh, kh + S * (height_out - 1) + 1, S)
                cols = slice(kw, kw + S * (width_out - 1) + 1, S)
                hit = (self.input[:, :, rows, cols] == self.output) & ~taken
                taken |= hit
                bottom_diff[:, :, rows, cols] += hit * top_diff
        return bottom_diff

    def backward_raw_book(self, top_diff):
        bottom_diff = np.zeros(self.input.shape)
        for idxn in range(top_diff.shape[0]):
            for idxc in range(top_diff.shape[1]):
                for idxh in range(top_diff.shape[2]):
                    for idxw in range(top_diff.shape[3]):
                        # 最大池化层的反向传播， 计算池化窗口中最大值位置， 并传递损失
                        hs = idxh * self.stride
                        ws = idxw * self.stride
                        max_index = np.argmax(self.input[idxn, idxc, hs:hs + self.kernel_size, ws:ws + self.kernel_size])
                        max_index = np.unravel_index(max_index, [self.kernel_size, self.kernel_size])
                        bottom_diff[idxn, idxc, hs + max_index[0], ws + max_index[1]] += top_diff[idxn, idxc, idxh, idxw]
        return bottom_diff


class FlattenLayer(object):
    def __init__(self, input_shape, output_shape):
        self.input_shape = input_shape
        self.output_shape = output_shape
        assert np.prod(self.input_shape) == np.prod(self.output_shape)
        print('\tFlatten layer with input shape %s, output shape %s.' % (str(self.input_shape), str(self.output_shape)))

    def forward(self, input):
        assert list(input.shape[1:]) == list(self.input_shape)
        # matconvnet feature map dim: [N, height, width, channel]
        # ours feature map dim: [N, channel, height, width]
        self.input = np.transpose(input, [0, 2, 3, 1])
        self.output = self.input.reshape([self.input.shape[0]] + list(self.output_shape))
        return self.output

    def backward(self, top_diff):
        assert list(top_diff.shape[1:]) == list(self.output_shape)
        top_diff = np.transpose(top_diff, [0, 3, 1, 2])
        bottom_diff = top_diff.reshape([top_diff.shape[0]] + list(self.input_shape))
        return bottom_diff

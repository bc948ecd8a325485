# coding:utf-8
# labkit: staff-only -- an original-kit-style submission (test fixture); never shipped.
import numpy as np
import struct
import os
import scipy.io
import scipy.misc
import time

from layers_1 import FullyConnectedLayer, ReLULayer
from layers_2 import ConvolutionalLayer, MaxPoolingLayer
from layers_3 import ContentLossLayer, StyleLossLayer


class VGG19(object):
    def __init__(self, param_path='../../imagenet-vgg-verydeep-19.mat'):
        self.param_path = param_path
        self.param_layer_name = [
            'conv1_1', 'relu1_1', 'conv1_2', 'relu1_2', 'pool1',
            'conv2_1', 'relu2_1', 'conv2_2', 'relu2_2', 'pool2',
            'conv3_1', 'relu3_1', 'conv3_2', 'relu3_2', 'conv3_3', 'relu3_3', 'conv3_4', 'relu3_4', 'pool3',
            'conv4_1', 'relu4_1', 'conv4_2', 'relu4_2', 'conv4_3', 'relu4_3', 'conv4_4', 'relu4_4', 'pool4',
            'conv5_1', 'relu5_1', 'conv5_2', 'relu5_2', 'conv5_3', 'relu5_3', 'conv5_4', 'relu5_4', 'pool5'
        ]

    def build_model(self):
        # 定义VGG19 的网络结构
        print('Building vgg-19 model...')
        self.layers = {}
        channels = {'1': (3, 64), '2': (64, 128), '3': (128, 256), '4': (256, 512), '5': (512, 512)}
        widths = {'1': 64, '2': 128, '3': 256, '4': 512, '5': 512}
        for name in self.param_layer_name:
            block = name[-3] if name.startswith('conv') or name.startswith('relu') else name[-1]
            if name.startswith('conv'):
                if name.endswith('_1'):
                    cin = channels[block][0]
                else:
                    cin = widths[block]
                self.layers[name] = ConvolutionalLayer(3, cin, widths[block], 1, 1, 1)
            elif name.startswith('relu'):
                self.layers[name] = ReLULayer()
            else:
                self.layers[name] = MaxPoolingLayer(2, 2, 1)
        self.update_layer_list = []
        for layer_name in self.layers.keys():
            if 'conv' in layer_name:
                self.update_layer_list.append(layer_name)

    def init_model(self):
        print('Initializing parameters of each layer in vgg-19...')
        for layer_name in self.update_layer_list:
            self.layers[layer_name].init_param()

    def load_model(self):
        print('Loading parameters from file ' + self.param_path)
        params = scipy.io.loadmat(self.param_path)
        self.image_mean = params['normalization'][0][0][0]
        self.image_mean = np.mean(self.image_mean, axis=(0, 1))
        print('Get image mean: ' + str(self.image_mean))
        for idx in range(37):
            if 'conv' in self.param_layer_name[idx]:
                weight, bias = params['layers'][0][idx][0][0][0][0]
                # matconvnet: weights dim [height, width, in_channel, out_channel]
                # ours: weights dim [in_channel, height, width, out_channel]
                weight = np.transpose(weight, [2, 0, 1, 3])
                bias = bias.reshape(-1)
                self.layers[self.param_layer_name[idx]].load_param(weight, bias)

    def load_image(self, image_dir, image_height, image_width):
        print('Loading and preprocessing image from ' + image_dir)
        self.input_image = scipy.misc.imread(image_dir)
        image_shape = self.input_image.shape
        self.input_image = scipy.misc.imresize(self.input_image, [image_height, image_width, 3])
        self.input_image = np.array(self.input_image).astype(np.float32)
        self.input_image -= self.image_mean
        self.input_image = np.reshape(self.input_image, [1] + list(self.input_image.shape))
        # input dim [N, channel, height, width]
        self.input_image = np.transpose(self.input_image, [0, 3, 1, 2])
        return self.input_image, image_shape

    def save_image(self, input_image, image_shape, image_dir):
        input_image = np.transpose(input_image, [0, 2, 3, 1])
        input_image = input_image[0] + self.image_mean
        input_image = np.clip(input_image, 0, 255).astype(np.uint8)
        input_image = scipy.misc.imresize(input_image, image_shape)
        scipy.misc.imsave(image_dir, input_image)

    def forward(self, input_image, layer_list):
        start_time = time.time()
        current = input_image
        layer_forward = {}
        for idx in range(len(self.param_layer_name)):
            # 计算VGG19网络的前向传播
            current = self.layers[self.param_layer_name[idx]].forward(current)
            if self.param_layer_name[idx] in layer_list:
                layer_forward[self.param_layer_name[idx]] = current
        return layer_forward

    def backward(self, dloss, layer_name):
        layer_idx = list.index(self.param_layer_name, layer_name)
        for idx in range(layer_idx, -1, -1):
            # 计算VGG19网络的反向传播
            dloss = self.layers[self.param_layer_name[idx]].backward(dloss)
        return dloss


def get_random_img(content_image, noise):
    noise_img = np.random.uniform(-20, 20, content_image.shape)
    random_img = noise_img * noise + content_image * (1 - noise)
    return random_img


class AdamOptimizer(object):
    def __init__(self, lr, diff_shape):
        self.beta1 = 0.9
        self.beta2 = 0.999
        self.eps = 1e-8
        self.lr = lr
        self.mt = np.zeros(diff_shape)
        self.vt = np.zeros(diff_shape)
        self.step = 0

    def update(self, input, grad):
        self.step += 1
        self.mt = self.beta1 * self.mt + (1 - self.beta1) * grad
        self.vt = self.beta2 * self.vt + (1 - self.beta2) * np.square(grad)
        mt_hat = self.mt / (1 - self.beta1 ** self.step)
        vt_hat = self.vt / (1 - self.beta2 ** self.step)
        output = input - self.lr * mt_hat / (np.sqrt(vt_hat) + self.eps)
        return output

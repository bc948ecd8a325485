# coding:utf-8
# labkit: staff-only -- an original-kit-style submission (test fixture); never shipped.
import pycnml
import time
import numpy as np
import os
import scipy.io


class VGG19(object):
    def __init__(self):
        # set up net
        self.net = pycnml.CnmlNet(16)
        self.input_quant_params = []
        self.filter_quant_params = []

    def build_model(self, param_path='../../imagenet-vgg-verydeep-19.mat',
                    quant_param_path='../../vgg19_quant_param_new.npz'):
        self.param_path = param_path

        # loading quant params
        # before creating layers, you should run through the net with cpu and get positions and scales used for quantizing input data. you can get quant params by using pycnml.QuantTool
        # only layers like conv and mlp need to be quantized
        params = np.load(quant_param_path)
        input_params = params['input']
        filter_params = params['filter']
        for i in range(0, len(input_params), 2):
            self.input_quant_params.append(pycnml.QuantParam(int(input_params[i]), float(input_params[i + 1])))
        for i in range(0, len(filter_params), 2):
            self.filter_quant_params.append(pycnml.QuantParam(int(filter_params[i]), float(filter_params[i + 1])))

        # TODO: 使用 pycnml 搭建 VGG19 网络
        self.net.setInputShape(1, 3, 224, 224)
        # conv1_1
        self.net.createConvLayer('conv1_1', 64, 3, 1, 1, 1, self.input_quant_params[0])
        self.net.createReLuLayer('relu1_1')
        self.net.createConvLayer('conv1_2', 64, 3, 1, 1, 1, self.input_quant_params[1])
        self.net.createReLuLayer('relu1_2')
        self.net.createPoolingLayer('pool1', 2, 2)
        self.net.createConvLayer('conv2_1', 128, 3, 1, 1, 1, self.input_quant_params[2])
        self.net.createReLuLayer('relu2_1')
        self.net.createConvLayer('conv2_2', 128, 3, 1, 1, 1, self.input_quant_params[3])
        self.net.createReLuLayer('relu2_2')
        self.net.createPoolingLayer('pool2', 2, 2)
        self.net.createConvLayer('conv3_1', 256, 3, 1, 1, 1, self.input_quant_params[4])
        self.net.createReLuLayer('relu3_1')
        self.net.createConvLayer('conv3_2', 256, 3, 1, 1, 1, self.input_quant_params[5])
        self.net.createReLuLayer('relu3_2')
        self.net.createConvLayer('conv3_3', 256, 3, 1, 1, 1, self.input_quant_params[6])
        self.net.createReLuLayer('relu3_3')
        self.net.createConvLayer('conv3_4', 256, 3, 1, 1, 1, self.input_quant_params[7])
        self.net.createReLuLayer('relu3_4')
        self.net.createPoolingLayer('pool3', 2, 2)
        self.net.createConvLayer('conv4_1', 512, 3, 1, 1, 1, self.input_quant_params[8])
        self.net.createReLuLayer('relu4_1')
        self.net.createConvLayer('conv4_2', 512, 3, 1, 1, 1, self.input_quant_params[9])
        self.net.createReLuLayer('relu4_2')
        self.net.createConvLayer('conv4_3', 512, 3, 1, 1, 1, self.input_quant_params[10])
        self.net.createReLuLayer('relu4_3')
        self.net.createConvLayer('conv4_4', 512, 3, 1, 1, 1, self.input_quant_params[11])
        self.net.createReLuLayer('relu4_4')
        self.net.createPoolingLayer('pool4', 2, 2)
        self.net.createConvLayer('conv5_1', 512, 3, 1, 1, 1, self.input_quant_params[12])
        self.net.createReLuLayer('relu5_1')
        self.net.createConvLayer('conv5_2', 512, 3, 1, 1, 1, self.input_quant_params[13])
        self.net.createReLuLayer('relu5_2')
        self.net.createConvLayer('conv5_3', 512, 3, 1, 1, 1, self.input_quant_params[14])
        self.net.createReLuLayer('relu5_3')
        self.net.createConvLayer('conv5_4', 512, 3, 1, 1, 1, self.input_quant_params[15])
        self.net.createReLuLayer('relu5_4')
        self.net.createPoolingLayer('pool5', 2, 2)
        # flatten
        self.net.createFlattenLayer('flatten', [1, 512 * 7 * 7, 1, 1])
        self.net.createMlpLayer('fc6', 4096, self.input_quant_params[16])
        self.net.createReLuLayer('relu6')
        self.net.createMlpLayer('fc7', 4096, self.input_quant_params[17])
        self.net.createReLuLayer('relu7')
        self.net.createMlpLayer('fc8', 1000, self.input_quant_params[18])
        self.net.createSoftmaxLayer('softmax', 1)

    def load_model(self):
        # loading params ...
        print('Loading parameters from file ' + self.param_path)
        params = scipy.io.loadmat(self.param_path)
        self.image_mean = params['normalization'][0][0][0]
        self.image_mean = np.mean(self.image_mean, axis=(0, 1))

        count = 0
        for idx in range(self.net.size()):
            if 'conv' in self.net.getLayerName(idx):
                weight, bias = params['layers'][0][idx][0][0][0][0]
                # matconvnet: weights dim [height, width, in_channel, out_channel]
                # ours: weights dim [out_channel, in_channel, height, width]
                weight = np.transpose(weight, [3, 2, 0, 1]).flatten().astype(np.float)
                bias = bias.reshape(-1).astype(np.float)
                self.net.loadParams(idx, weight, bias, self.filter_quant_params[count])
                count += 1
            if 'fc' in self.net.getLayerName(idx):
                # Loading params may take quite a while. Please be patient.
                weight, bias = params['layers'][0][idx - 1][0][0][0][0]
                weight = weight.reshape([weight.shape[0] * weight.shape[1] * weight.shape[2], weight.shape[3]])
                weight = np.transpose(weight, [1, 0]).flatten().astype(np.float)
                bias = bias.reshape(-1).astype(np.float)
                self.net.loadParams(idx, weight, bias, self.filter_quant_params[count])
                count += 1

    def load_image(self, image_name):
        # loading image ...
        image = scipy.misc.imread(image_name)
        print('Loading and preprocessing image from ' + image_name)
        image = scipy.misc.imresize(image, [224, 224, 3])
        image = np.array(image).astype(np.float32)
        image -= self.image_mean
        image = np.reshape(image, [1] + list(image.shape))
        # transpose [N, H, W, C] -> [N, C, H, W]
        image = np.transpose(image, [0, 3, 1, 2])
        self.net.setInputData(image.flatten().astype(np.float))

    def forward(self):
        return self.net.forward()

    def get_top5(self, label):
        start = time.time()
        self.forward()
        end = time.time()

        result = self.net.getOutputData()

        # loss
        top1 = False
        top5 = False
        out_order = sorted(range(len(result)), key=lambda x: result[x], reverse=True)
        if out_order[0] == label:
            top1 = True
        for i in range(0, 5):
            if out_order[i] == label:
                top5 = True
        return end - start, top1, top5

    def evaluate(self, file_list):
        top1_num = 0
        top5_num = 0
        total_num = 0

        start = time.time()
        with open(file_list, 'r') as f:
            file_list = f.readlines()
            total_num = len(file_list)
            for line in file_list:
                image = line.split()[0].strip()
                label = int(line.split()[1].strip())
                self.load_image(image)
                _, top1, top5 = self.get_top5(label)
                if top1:
                    top1_num += 1
                if top5:
                    top5_num += 1
        end = time.time()

        print('Global accuracy : ')
        print('accuracy1: %f (%d/%d) ' % (float(top1_num) / float(total_num), top1_num, total_num))
        print('accuracy5: %f (%d/%d) ' % (float(top5_num) / float(total_num), top5_num, total_num))
        print('Total execution time: %f' % (end - start))

# coding=utf-8
# labkit: staff-only -- the original kit's exp 3.1 driver, written from lab_interfaces.md
# (run in its folder; data one level up). Never shipped.
import numpy as np
import struct
import os
import time

from stu_upload.vgg_cpu import VGG19


def evaluate(vgg):
    # the original's given code: uses the global `prob` of the loop below
    top1 = np.argmax(prob[0])
    print('Classification result: id = %d, prob = %f' % (top1, prob[0, top1]))


if __name__ == '__main__':
    vgg = VGG19(param_path='../imagenet-vgg-verydeep-19.mat')
    vgg.build_model()
    vgg.init_model()
    vgg.load_model()
    vgg.load_image('../cat1.jpg')
    start_time = time.time()
    current = vgg.input_image
    pool5 = None
    for idx in range(len(vgg.param_layer_name)):
        print('Inferencing layer: ' + vgg.param_layer_name[idx])
        current = vgg.layers[vgg.param_layer_name[idx]].forward(current)
        if vgg.param_layer_name[idx] == 'pool5':
            pool5 = current
    print('Inference time: %f' % (time.time() - start_time))
    prob = current
    pool5_dump = np.load('pool5_dump.npy')
    mse = np.mean(np.square(pool5 - pool5_dump))
    print('MSE of pool5: %f' % mse)
    if mse < 0.003:
        print('pool5 correct!')
    else:
        print('pool5 wrong!')
    evaluate(vgg)

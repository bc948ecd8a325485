# coding=utf-8
# labkit: staff-only -- the original kit's exp 3.2 driver, written from lab_interfaces.md
# (run in its folder; data one level up). Never shipped.
import numpy as np
import time

from stu_upload.vgg19_demo import VGG19

if __name__ == '__main__':
    vgg = VGG19()
    vgg.build_model(param_path='../imagenet-vgg-verydeep-19.mat',
                    quant_param_path='../vgg19_quant_param_new.npz')
    vgg.load_model()
    vgg.load_image('../cat1.jpg')
    for i in range(10):
        start = time.time()
        vgg.forward()
        end = time.time()
        print('inference time: %f' % (end - start))
    result = vgg.net.getOutputData()
    print('Classification result: id = %d, prob = %f' % (result.index(max(result)), max(result)))

"""A plain numpy MLP for the assignment's protocol, written the way a student would write it.

This is the benchmark's yardstick, not part of the library: float64 throughout, new arrays on every
step, and the three numbers of a validation (validation loss, validation accuracy, training
accuracy) computed in three separate forward passes. It follows the same mathematics as mlp_core
(sigmoid or improved sigmoid hidden layers, softmax output, mean cross-entropy, mini-batch SGD with
optional momentum, reshuffling every epoch, dropping the last incomplete batch), so that given the
same initial weights and the same shuffling generator it takes the same steps.
"""

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def sigmoid_derivative(a):
    return a * (1.0 - a)


def improved_sigmoid(z):
    return 1.7159 * np.tanh(2.0 * z / 3.0)


def improved_sigmoid_derivative(a):
    return (2.0 / 3.0) / 1.7159 * (1.7159**2 - a**2)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy_loss(targets, outputs):
    return -np.mean(np.sum(targets * np.log(outputs), axis=1))


class Model:
    def __init__(self, weights, improved_sigmoid_on=False):
        self.ws = [np.array(w, dtype=np.float64) for w in weights]
        if improved_sigmoid_on:
            self.f, self.df = improved_sigmoid, improved_sigmoid_derivative
        else:
            self.f, self.df = sigmoid, sigmoid_derivative
        self.hidden_layer_output = []

    def forward(self, X):
        self.hidden_layer_output = [X]
        a = X
        for w in self.ws[:-1]:
            a = self.f(a @ w)
            self.hidden_layer_output.append(a)
        return softmax(a @ self.ws[-1])

    def backward(self, X, outputs, targets):
        grads = [None] * len(self.ws)
        delta = -(targets - outputs) / X.shape[0]
        for l in range(len(self.ws) - 1, -1, -1):
            a = self.hidden_layer_output[l]
            grads[l] = a.T @ delta
            if l > 0:
                delta = (delta @ self.ws[l].T) * self.df(a)
        return grads


def accuracy(X, targets, model):
    outputs = model.forward(X)
    return np.mean(outputs.argmax(axis=1) == targets.argmax(axis=1))


def validation_loss(X, targets, model):
    return cross_entropy_loss(targets, model.forward(X))


class Trainer:
    """One run of the protocol. `rng` shuffles the training set at the start of every epoch."""

    def __init__(
        self,
        model,
        X_train,
        Y_train,
        X_val,
        Y_val,
        learning_rate=0.1,
        momentum=0.0,
        batch_size=32,
        validations_per_epoch=5,
        rng=None,
    ):
        self.model = model
        self.X_train, self.Y_train, self.X_val, self.Y_val = X_train, Y_train, X_val, Y_val
        self.learning_rate, self.momentum, self.batch_size = learning_rate, momentum, batch_size
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.steps_per_epoch = len(X_train) // batch_size
        self.interval = max(1, self.steps_per_epoch // validations_per_epoch)
        self.velocity = [np.zeros_like(w) for w in model.ws]
        self.step = 0
        self.train_loss, self.val_loss, self.val_acc, self.train_acc = [], [], [], []

    def train_step(self, X_batch, Y_batch):
        outputs = self.model.forward(X_batch)
        loss = cross_entropy_loss(Y_batch, outputs)
        grads = self.model.backward(X_batch, outputs, Y_batch)
        for i in range(len(self.model.ws)):
            if self.momentum:
                self.velocity[i] = grads[i] + self.momentum * self.velocity[i]
                self.model.ws[i] = self.model.ws[i] - self.learning_rate * self.velocity[i]
            else:
                self.model.ws[i] = self.model.ws[i] - self.learning_rate * grads[i]
        return loss

    def validate(self):
        self.val_loss.append(validation_loss(self.X_val, self.Y_val, self.model))
        self.val_acc.append(accuracy(self.X_val, self.Y_val, self.model))
        self.train_acc.append(accuracy(self.X_train, self.Y_train, self.model))

    def train_epoch(self, validate=True):
        order = self.rng.permutation(len(self.X_train))
        X, Y = self.X_train[order], self.Y_train[order]
        for k in range(self.steps_per_epoch):
            X_batch = X[k * self.batch_size : (k + 1) * self.batch_size]
            Y_batch = Y[k * self.batch_size : (k + 1) * self.batch_size]
            self.train_loss.append(self.train_step(X_batch, Y_batch))
            if validate and self.step % self.interval == 0:
                self.validate()
            self.step += 1

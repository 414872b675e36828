DROP TABLE push_outputs;
DROP TABLE pull_inputs;

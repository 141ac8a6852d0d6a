"""radloop training: synthetic chest radiographs, the pneumonia model, the SageMaker pipeline and its local executor.

Model code (``model``, ``preprocess``, ``train``, ``evaluate``) makes no AWS calls: it follows the SageMaker container
contract (``/opt/ml/...`` paths and ``SM_*`` variables) so the same scripts run in a SageMaker job, in the local
executor, and in tests.
"""

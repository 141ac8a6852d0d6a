"""Event names (EventBridge ``detail-type``): the one place they are spelled.

Events are facts, so they are named in the past tense.
"""

INSTANCE_STORED = "InstanceStored"
INSTANCE_REJECTED = "InstanceRejected"
INSTANCE_SCORED = "InstanceScored"
IMAGE_VERIFIED = "ImageVerified"
TRAINING_STARTED = "TrainingStarted"
TRAINING_COMPLETED = "TrainingCompleted"
MODEL_REGISTERED = "ModelRegistered"
MODEL_APPROVED = "ModelApproved"
MODEL_PERFORMANCE_DEGRADED = "ModelPerformanceDegraded"
DRIFT_DETECTED = "DriftDetected"

#: S3's own notification, delivered through EventBridge's default bus.
S3_OBJECT_CREATED = "Object Created"

#: AWS HealthImaging's own import-job notifications (source ``aws.medical-imaging``, the default bus), read by ingestion
#: when ``image_store=healthimaging`` (shared.image_store.healthimaging).
HEALTHIMAGING_SOURCE = "aws.medical-imaging"
IMPORT_JOB_COMPLETED = "Import Job Completed"
IMPORT_JOB_FAILED = "Import Job Failed"

ALL = (
    INSTANCE_STORED,
    INSTANCE_REJECTED,
    INSTANCE_SCORED,
    IMAGE_VERIFIED,
    TRAINING_STARTED,
    TRAINING_COMPLETED,
    MODEL_REGISTERED,
    MODEL_APPROVED,
    MODEL_PERFORMANCE_DEGRADED,
    DRIFT_DETECTED,
)

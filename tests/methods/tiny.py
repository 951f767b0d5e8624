"""Arguments that shrink the shipped configs to a few CPU steps on the small synthetic datasets."""

from __future__ import annotations

#: one CPU process in full precision, loaders without worker processes, every step's values logged (schedule
#: and teacher values reach the logged metrics on logging steps only)
CPU = (
    # the full-size configs state their global batch (16 for VOC); the tiny runs use a few images per step
    "--data.init_args.loader.global_batch_size=0",
    "--trainer.log_every_n_steps=1",
    "--data.init_args.loader.num_workers=0",
    "--data.init_args.loader.persistent_workers=false",
    "--data.init_args.loader.pin_memory=false",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.precision=32-true",
)

#: 64-pixel crops, 2 images per batch
SMALL_BATCHES = (
    "--data.init_args.transform.crop_size=64",
    "--data.init_args.loader.batch_size=2",
    "--data.init_args.loader.eval_batch_size=2",
)

#: DuPL: a 2-block ViT with 8-px patches on 64-px crops and a compressed schedule: the CAM warm-up is step
#: 0-1, the cross segmentation loss starts at step 2, noise filtering and the strong view at step 3, the
#: consistency loss at step 4
DUPL = (
    "--model.init_args.backbone=vit_tiny_patch16_224",
    '--model.init_args.backbone_kwargs={"depth": 2, "patch_size": 8, "img_size": 64}',
    "--model.init_args.aux_layer=0",
    "--model.init_args.head_channels=16",
    "--model.init_args.phases.seg_start=1",
    "--model.init_args.phases.noise_filter_start=3",
    "--model.init_args.noise_filter.min_pixels=10",
    "--model.init_args.noise_filter.min_gap=0.0",
    "--model.init_args.cam.par_iterations=2",
    "--model.init_args.cam.par_dilations=[1,2]",
    "--model.init_args.global_batch_size=null",
    "--model.init_args.optim.warmup_steps=2",
    *SMALL_BATCHES,
)

#: U2PL: ResNet-18, a small memory bank, the generator's 1/8 partition; one supervised-only epoch of 2
#: steps, then semi-supervised steps
U2PL = (
    "--model.init_args.encoder=resnet18",
    "--model.init_args.multi_grid=null",
    "--model.init_args.warmup_epochs=1",
    "--model.init_args.contrastive.capacity=256",
    "--model.init_args.contrastive.background_capacity=512",
    "--model.init_args.contrastive.num_anchors=16",
    "--model.init_args.contrastive.num_negatives=8",
    "--data.init_args.view.init_args.labeled_list=splits/1_8/labeled.txt",
    "--data.init_args.view.init_args.unlabeled_list=splits/1_8/unlabeled.txt",
    "--data.init_args.view.init_args.unlabeled_batch_size=2",
    *SMALL_BATCHES,
    "--trainer.limit_train_batches=2",
)

#: Seminar: DeepLabV3+ / ResNet-18, epochs of 2 steps so that the consistency ramp (2 epochs) moves within a run
SEMINAR = (
    "--model.init_args.encoder=resnet18",
    "--model.init_args.multi_grid=[1,2]",
    "--model.init_args.consistency.ramp_epochs=2",
    *SMALL_BATCHES,
    "--trainer.limit_train_batches=2",
)

#: AFA: a 1-block-per-stage MiT from scratch on 64-px crops (a 4x4 token grid); the CAM-only warm-up is step
#: 0, the segmentation and affinity losses start at step 1, the propagated labels at step 2
AFA = (
    (
        '--model.init_args.encoder_kwargs={"embed_dims": [8, 16, 16, 32], "depths": [1, 1, 1, 2], '
        '"num_heads": [1, 1, 2, 2]}'
    ),
    "--model.init_args.embed_dim=16",
    "--model.init_args.phases.seg_start=1",
    "--model.init_args.phases.propagation_start=2",
    "--model.init_args.labels.par_iterations=2",
    "--model.init_args.labels.par_dilations=[1,2]",
    "--model.init_args.labels.radius=2",
    "--model.init_args.optim.warmup_steps=2",
    *SMALL_BATCHES,
)

#: U2PL+ WS: AFA's tiny network and schedule, a 16-d representation head and small queues; the contrastive
#: term starts with the segmentation loss (step 1)
U2PL_WEAK = (
    *AFA,
    "--model.init_args.rep_channels=16",
    "--model.init_args.contrastive.start_step=1",
    "--model.init_args.contrastive.capacity=64",
    "--model.init_args.contrastive.background_capacity=128",
    "--model.init_args.contrastive.num_anchors=8",
    "--model.init_args.contrastive.num_negatives=4",
    "--model.init_args.contrastive.max_keys_per_step=64",
)

#: DAFormer: a 1-block-per-stage MiT from scratch with a 16-wide decoder on 64-px crops; the synthetic street
#: layouts' 64x64 images, 2 source + 2 target images per step, rare-class sampling at the tiny images' scale
DAFORMER = (
    (
        '--model.init_args.encoder_kwargs={"embed_dims": [8, 16, 16, 32], "depths": [1, 1, 1, 1], '
        '"num_heads": [1, 1, 2, 2]}'
    ),
    "--model.init_args.embed_dim=16",
    "--model.init_args.self_training.ignore_top=2",
    "--model.init_args.self_training.ignore_bottom=8",
    "--model.init_args.optim.warmup_steps=2",
    "--data.init_args.view.init_args.unlabeled_batch_size=2",
    "--data.init_args.view.init_args.rare_class_sampling.min_pixels=20",
    *SMALL_BATCHES,
)

#: U2PL+ DA: DAFormer's tiny run, a 16-d representation head and small queues
U2PL_DA = (
    *DAFORMER,
    "--model.init_args.rep_channels=16",
    "--model.init_args.contrastive.capacity=64",
    "--model.init_args.contrastive.background_capacity=128",
    "--model.init_args.contrastive.num_anchors=8",
    "--model.init_args.contrastive.num_negatives=4",
    "--model.init_args.contrastive.max_keys_per_step=64",
    "--model.init_args.contrastive.min_valid_classes=1",
)

#: ASDT: ResNet-18 at output stride 8 with 16-wide seg heads on 64-px crops, CAMs at two scales; the classifier
#: warm-up is step 0, the PW wave has period 4 (one class-teacher step, then three seg-teacher steps)
ASDT = (
    "--model.init_args.encoder=resnet18",
    "--model.init_args.seg_width=16",
    "--model.init_args.warmup_steps=1",
    "--model.init_args.pw.period=4",
    "--model.init_args.pw.tau=4.0",
    "--model.init_args.labels.cam_scales=[1.0,0.5]",
    *SMALL_BATCHES,
)

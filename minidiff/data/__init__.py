"""What x_0 is (lessons 07, 10, 11): MNIST and where shipped files are found, the images' file
formats, captions and masks, and the spaces the diffusion runs in (pixels or latents)."""
